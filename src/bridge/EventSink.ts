import type { EventType } from '../audit/Metrics.js';
import type { EventRecord, RunRecord } from '../audit/RunRecord.js';
import { eventData, eventDataLength, type EventDataSource } from './eventData.js';
import { envelope } from './json.js';

/**
 * One event on its way from a trace's bridge to the user's connections. One
 * object per event all the way: the sink keeps this same object in its resume
 * window and hold, and caches the event's WebSocket frame on it.
 *
 * Its JSON text (`payload`) is written from its fields the first time it is
 * needed, and is the same bytes whenever it is written: an event held for a
 * user with no connection, and given up, is never serialised at all.
 */
export class OutboundEvent {
  /** Sink's cache: the frame, when several connections share it. */
  frame: Buffer | undefined = undefined;
  /**
   * Sink's accounting: the exact frame size in bytes once measured, 0 before.
   * While the event is held (never serialised yet) it is the estimate the
   * hold counted (`estimatedBytes`), so letting go of it reads no strings.
   */
  bytes = 0;
  private json: string | undefined = undefined;

  constructor(
    readonly conversation: string | undefined,
    /** The ledger's record of the event (its seq, type, span, run and outcome). */
    readonly record: EventRecord,
    /** performance.now() when the span hook ran (delivery latency histogram). */
    readonly hookAt: number | undefined,
    /** The agent the event belongs to (`agent` of the envelope). */
    readonly agent: string | undefined,
    /**
     * The event's `data` object, as JSON; undefined: written with the
     * envelope from the record's span (only the bridge leaves it out, for a
     * span that ended: its record's span is then the bridge's span node, whose
     * fields no longer change).
     */
    private readonly data: string | undefined,
  ) {}

  // Read from the run and the record (not copied: the resume window keeps every delivered event a while).
  get run(): RunRecord {
    return this.record.run;
  }
  /** The run's user ('' until it is known: the bridge publishes an event only once it is). */
  get user(): string {
    return this.record.run.user ?? '';
  }
  get runId(): string {
    return this.run.runId;
  }
  get traceId(): string {
    return this.run.traceId;
  }
  get seq(): number {
    return this.record.seq;
  }
  get type(): EventType {
    return this.record.type;
  }

  /** The tracewire.v1 JSON text, written on first use. */
  get payload(): string {
    return (this.json ??= envelope({ type: this.type, runId: this.runId, traceId: this.traceId, spanId: this.record.spanId, seq: this.seq, tsMs: this.record.tsMs, agent: this.agent, conversation: this.conversation, data: this.data ?? eventData(this.type, this.record.span as unknown as EventDataSource) }));
  }

  /** Let go of the JSON text (the frame holds the same bytes); it is written again if ever needed. */
  releasePayload(): void {
    this.json = undefined;
  }

  /**
   * What the event's frame costs for byte bounds before it is serialised:
   * the envelope's fixed part plus its fields' lengths (the exact UTF-8 size
   * for ASCII text that needs no escaping; an estimate otherwise).
   */
  get estimatedBytes(): number {
    return estimate(this.record, this.agent, this.conversation, this.data?.length ?? eventDataLength(this.type, this.record.span as unknown as EventDataSource));
  }

  /**
   * The event of a record the bridge handed to `EventSink.publishRecord`:
   * everything it carries is read from the record, its run and its span.
   */
  static ofRecord(record: EventRecord, hookAt: number | undefined): OutboundEvent {
    const span = record.span as unknown as HeldSource;
    return new OutboundEvent(span.conv, record, hookAt, span.agentName, undefined);
  }

  /** `estimatedBytes` of `ofRecord(record)`, without making the event. */
  static heldEstimate(record: EventRecord): number {
    const span = record.span as unknown as HeldSource;
    return estimate(record, span.agentName, span.conv, eventDataLength(record.type, span));
  }
}

/** What `OutboundEvent.ofRecord` reads from a record's span: a bridge span node, ended and anchored (none of it changes any more). */
interface HeldSource extends EventDataSource {
  readonly conv: string | undefined;
  readonly agentName: string | undefined;
}

function estimate(record: EventRecord, agent: string | undefined, conversation: string | undefined, dataLength: number): number {
  const run = record.run;
  return 150 + run.runId.length + run.traceId.length + record.spanId.length + (agent?.length ?? 4) + (conversation?.length ?? 4) + dataLength;
}

/** Where a bridge sends events: the event hub in emit mode. Must not throw. */
export interface EventSink {
  publish(ev: OutboundEvent): void;
  /**
   * `publish` for an event the sink makes from its record when it needs it
   * (`OutboundEvent.ofRecord`): one whose data is written later and whose
   * span carries its conversation. For a user with no connection it is held
   * as the record alone. `hookAt` as in OutboundEvent; `atMs`: now, as the
   * caller last read the clock (an OTLP request's spans share one reading).
   */
  publishRecord?(record: EventRecord, hookAt: number | undefined, atMs: number): void;
  /** A run ended: its events become resumable only for the retention window. */
  runEnded?(runId: string): void;
}
