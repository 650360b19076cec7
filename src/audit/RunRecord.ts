import { append } from '../util/arrays.js';
import { DROP_REASONS, type DropReason, type EventType, type LifecycleKind, type Verdict } from './Metrics.js';

export const EV_PENDING = 0;
export const EV_DELIVERED = 1;
export const EV_DROPPED = 2;
/** Held for a user with no matching connection (undelivered as no_subscriber if still held at verdict time). */
export const EV_HELD = 3;

const STATE_MASK = 3;
const LATE = 4;
const ACKED = 8;
/** In the event hub's hold. */
const IN_HOLD = 16;
/** An ack covered it while it was not delivered (it stays unacked; the next ack's walk stops here). */
const ACK_PASSED = 32;
const REASON_SHIFT = 6;

/**
 * One expected event of a run and what became of it. Kept small (every event
 * of every kept run has one): state, flags and the drop reason share one
 * small integer, the time is read from the span's summary, and the delivery
 * time is kept as whole milliseconds after the event's time.
 */
export class EventRecord {
  private bits = EV_PENDING;
  /** Connections whose write of this event completed. */
  connections = 0;
  /** Connections the event was written to (attempts). */
  attempts = 0;
  private deliveredAfterMs = -1;

  constructor(
    readonly seq: number,
    readonly type: EventType,
    /** The span the event is about (its start or its end). */
    readonly span: SpanSummary,
    /** The run it belongs to. */
    readonly run: RunRecord,
  ) {}

  get spanId(): string {
    return this.span.spanId;
  }

  /** The span's start for a start event, its end for a completion. */
  get tsMs(): number {
    const s = this.span;
    return this.type === 'tool_completed' || this.type === 'agent_completed' ? s.endMs ?? s.startMs : s.startMs;
  }

  /** EV_PENDING, EV_DELIVERED, EV_DROPPED or EV_HELD. */
  get state(): number {
    return this.bits & STATE_MASK;
  }
  set state(v: number) {
    this.bits = (this.bits & ~STATE_MASK) | v;
  }

  get reason(): DropReason | undefined {
    const i = this.bits >>> REASON_SHIFT;
    return i === 0 ? undefined : DROP_REASONS[i - 1];
  }
  set reason(r: DropReason | undefined) {
    this.bits = (this.bits & ((1 << REASON_SHIFT) - 1)) | ((r === undefined ? 0 : DROP_REASONS.indexOf(r) + 1) << REASON_SHIFT);
  }

  get late(): boolean {
    return (this.bits & LATE) !== 0;
  }
  set late(v: boolean) {
    this.bits = v ? this.bits | LATE : this.bits & ~LATE;
  }

  /** In the event hub's hold (its user had no connection that takes it). */
  get inHold(): boolean {
    return (this.bits & IN_HOLD) !== 0;
  }
  set inHold(v: boolean) {
    this.bits = v ? this.bits | IN_HOLD : this.bits & ~IN_HOLD;
  }

  get acked(): boolean {
    return (this.bits & ACKED) !== 0;
  }
  set acked(v: boolean) {
    this.bits = v ? this.bits | ACKED : this.bits & ~ACKED;
  }

  get ackPassed(): boolean {
    return (this.bits & ACK_PASSED) !== 0;
  }
  set ackPassed(v: boolean) {
    this.bits = v ? this.bits | ACK_PASSED : this.bits & ~ACK_PASSED;
  }

  /** When the first write completed (epoch ms, whole milliseconds), if it did. */
  get deliveredAtMs(): number | undefined {
    return this.deliveredAfterMs < 0 ? undefined : Math.round(this.tsMs) + this.deliveredAfterMs;
  }
  set deliveredAtMs(ms: number | undefined) {
    // An event delivered "before" its span time (clock skew of a remote span) is kept as delivered at that time.
    this.deliveredAfterMs = ms === undefined ? -1 : Math.max(0, Math.round(ms) - Math.round(this.tsMs));
  }
}

export interface AuditOutcome {
  readonly spanId: string;
  readonly type: EventType;
  readonly outcome: 'delivered' | 'dropped';
  readonly reason: DropReason | undefined;
}

/** Audit mode: the agent.event outcomes a backend recorded for a run. */
export interface RunAudit {
  /** How many were recorded. */
  outcomes: number;
  /** Waiting to be matched to expected events at verdict time. */
  pending: AuditOutcome[] | undefined;
}

/** One span of the run, for the inspector timeline. */
export interface SpanSummary {
  readonly spanId: string;
  readonly parentSpanId: string | undefined;
  readonly kind: LifecycleKind;
  readonly name: string | undefined;
  startMs: number;
  endMs?: number;
  error?: string;
}

/** Why a verdict was forced on a run before its top-level span ended. */
export type ForcedCause = 'timeout' | 'evicted';

/** What a judgement's explanation is written from, as it stood at verdict time. */
export interface ExplainContext {
  readonly mode: 'emit' | 'audit';
  readonly cause: ForcedCause | undefined;
  readonly timeoutMs: number;
  readonly user: string | undefined;
  readonly sawConnection: boolean;
  readonly auditOutcomes: number;
}

/** A run's verdict with its counts; the one-sentence explanation is written when first read. */
export class Judgement {
  private text: string | undefined;

  constructor(
    readonly verdict: Verdict,
    readonly judgedAtMs: number,
    readonly expected: number,
    readonly delivered: number,
    /** Undelivered counts per event type. */
    readonly undeliveredByType: Partial<Record<EventType, number>>,
    /** Undelivered counts per reason. */
    readonly reasons: Partial<Record<DropReason, number>>,
    /** The reason a dashboard groups by: "none", "no_subscriber", or the failure. */
    readonly mainReason: DropReason | 'none',
    private readonly context: ExplainContext,
  ) {}

  get explanation(): string {
    return (this.text ??= explain(this, this.context));
  }
}

const plural = (n: number, one: string, many = `${one}s`): string => `${n} ${n === 1 ? one : many}`;

function explain(j: Judgement, c: ExplainContext): string {
  const { expected, delivered, reasons, undeliveredByType, mainReason } = j;
  const missing = expected - delivered;
  const who = c.user !== undefined ? `user ${c.user}` : 'an unidentified user';
  const reasonText = Object.entries(reasons).map(([k, n]) => `${k} ×${n}`).join(', ');
  const typeText = Object.entries(undeliveredByType).map(([k, n]) => `${k} ×${n}`).join(', ');
  const whileOpen = c.sawConnection && mainReason !== 'no_subscriber' && c.mode === 'emit' ? ' although a connection of the user was open' : '';
  const ran = `Agents ran (${plural(expected, 'event')} expected)`;
  switch (j.verdict) {
    case 'complete':
      return `All ${plural(expected, 'expected event')} were delivered to ${who}.`;
    case 'missing_events':
      if (c.mode === 'audit' && c.auditOutcomes === 0)
        return `${ran} but the backend recorded no agent.event span event at all: its event emitter is not wired (not_recorded ×${missing}).`;
      if (mainReason === 'no_subscriber') return `${ran} but none reached ${who}: nobody was connected (no_subscriber ×${reasons.no_subscriber}).`;
      if (mainReason === 'no_user') return `${ran} but none could be routed: the run carries no user id (${reasonText}).`;
      return `${ran} and none reached ${who}${whileOpen}: ${reasonText}.`;
    case 'partial':
      return `${missing} of ${plural(expected, 'expected event')} did not reach ${who}${whileOpen}: ${typeText} (${reasonText}).`;
    case 'abandoned':
      return c.cause === 'evicted'
        ? `The run was given up before its top-level agent span ended because tracewire's in-flight run limit was reached; ${delivered} of ${plural(expected, 'event')} had been delivered.`
        : `The top-level agent span did not end within ${c.timeoutMs} ms; ${delivered} of ${plural(expected, 'event')} were delivered before the run was given up.`;
    case 'interrupted':
      return `tracewire shut down while the run was in flight; ${delivered} of ${plural(expected, 'event')} had been delivered.`;
  }
}

/**
 * Everything the audit knows of one run. Created by the bridge when the
 * top-level agent span starts, updated by the hub's delivery outcomes, judged
 * by the ledger.
 */
export class RunRecord {
  events: EventRecord[] = [];
  spans: SpanSummary[] = [];
  endMs: number | undefined;
  user: string | undefined;
  conversation: string | undefined;
  judgement: Judgement | undefined;
  /** Connections of the user open when the run started/ended (for "was anyone listening"). */
  sawConnection = false;
  /** Audit mode only: what the backend recorded (one field for both, so emit-mode runs stay small). */
  audit: RunAudit | undefined;
  /** Order in which the ledger opened the run (list order among runs started in the same millisecond); internal. */
  openSeq = 0;
  /** The highest seq a client of the user acknowledged (an event counted delivered later, at or below it, is acked then). */
  ackedUpTo = 0;

  constructor(
    readonly runId: string,
    readonly traceId: string,
    readonly spanId: string,
    readonly agent: string,
    readonly startMs: number,
    readonly openedAtMs: number,
  ) {}

  /** Audit mode: agent.event outcomes recorded by the backend. */
  get auditOutcomes(): number {
    return this.audit?.outcomes ?? 0;
  }

  addEvent(seq: number, type: EventType, span: SpanSummary): EventRecord {
    const ev = new EventRecord(seq, type, span, this);
    this.events = append(this.events, ev);
    return ev;
  }
}
