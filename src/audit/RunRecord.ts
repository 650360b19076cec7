import { append } from '../util/arrays.js';
import type { DropReason, EventType, LifecycleKind, Verdict } from './Metrics.js';

export const EV_PENDING = 0;
export const EV_DELIVERED = 1;
export const EV_DROPPED = 2;
/** Held for a user with no matching connection (undelivered as no_subscriber if still held at verdict time). */
export const EV_HELD = 3;

/** One expected event of a run and what became of it. */
export interface EventRecord {
  readonly seq: number;
  readonly type: EventType;
  readonly spanId: string;
  readonly tsMs: number;
  state: number;
  reason?: DropReason;
  /** Connections whose write of this event completed. */
  connections: number;
  /** Connections the event was written to (attempts). */
  attempts: number;
  deliveredAtMs?: number;
  late?: boolean;
  acked?: boolean;
}

export interface AuditOutcome {
  readonly spanId: string;
  readonly type: EventType;
  readonly outcome: 'delivered' | 'dropped';
  readonly reason: DropReason | undefined;
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
  /** Audit mode: agent.event outcomes recorded by the backend. */
  auditOutcomes: number = 0;
  /** Audit mode: outcomes waiting to be matched to expected events at verdict time. */
  auditPending: AuditOutcome[] | undefined;
  /** Order in which the ledger opened the run (list order among runs started in the same millisecond); internal. */
  openSeq = 0;
  /** Index into the ledger's due queue; internal. */
  dueAtMs = 0;

  constructor(
    readonly runId: string,
    readonly traceId: string,
    readonly spanId: string,
    readonly agent: string,
    readonly startMs: number,
    readonly openedAtMs: number,
  ) {}

  addEvent(seq: number, type: EventType, spanId: string, tsMs: number): EventRecord {
    // Every field set up front: the record keeps one shape and no out-of-object property store.
    const ev: EventRecord = { seq, type, spanId, tsMs, state: EV_PENDING, reason: undefined, connections: 0, attempts: 0, deliveredAtMs: undefined, late: undefined, acked: undefined };
    this.events = append(this.events, ev);
    return ev;
  }
}
