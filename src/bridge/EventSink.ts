import type { EventType } from '../audit/Metrics.js';
import type { EventRecord, RunRecord } from '../audit/RunRecord.js';

/**
 * One event on its way from a trace's bridge to the user's connections. One
 * object per event all the way: the sink keeps this same object in its resume
 * window and hold, and caches the event's WebSocket frame on it.
 */
export class OutboundEvent {
  /** Sink's cache: the frame, built on the first write (the payload is released then). */
  frame: Buffer | undefined = undefined;
  /** Sink's accounting: frame size in bytes, set when the sink takes the event. */
  bytes = 0;
  /** Sink's hold: when the event was held for a user with no connection (ms), -1 while not held. */
  heldAtMs = -1;

  constructor(
    /** '' until the run's user is known. */
    public user: string,
    readonly conversation: string | undefined,
    readonly runId: string,
    readonly traceId: string,
    readonly seq: number,
    readonly type: EventType,
    /** The tracewire.v1 JSON text, serialised once ('' once the sink framed it). */
    public payload: string,
    readonly record: EventRecord,
    readonly run: RunRecord,
    /** performance.now() when the span hook ran (delivery latency histogram). */
    readonly hookAt: number | undefined,
  ) {}
}

/** Where a bridge sends events: the event hub in emit mode. Must not throw. */
export interface EventSink {
  publish(ev: OutboundEvent): void;
  /** A run ended: its events become resumable only for the retention window. */
  runEnded?(runId: string): void;
}
