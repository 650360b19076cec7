import type { EventType } from '../audit/Metrics.js';
import type { EventRecord, RunRecord } from '../audit/RunRecord.js';

/** One event on its way from a trace's bridge to the user's connections. */
export interface OutboundEvent {
  readonly user: string;
  readonly conversation: string | undefined;
  readonly runId: string;
  readonly traceId: string;
  readonly seq: number;
  readonly type: EventType;
  /** The tracewire.v1 JSON text, serialised once. */
  readonly payload: string;
  readonly record: EventRecord;
  readonly run: RunRecord;
  /** performance.now() when the span hook ran (delivery latency histogram). */
  readonly hookAt: number | undefined;
}

/** Where a bridge sends events: the event hub in emit mode. Must not throw. */
export interface EventSink {
  publish(ev: OutboundEvent): void;
  /** A run ended: its events become resumable only for the retention window. */
  runEnded?(runId: string): void;
}
