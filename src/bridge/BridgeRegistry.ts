import { DROP_REASONS, EVENT_TYPES, type DropReason, type EventType, type EvictionReason, type Metrics } from '../audit/Metrics.js';
import { RunRecord } from '../audit/RunRecord.js';
import type { RunLedger } from '../audit/RunLedger.js';
import { classify } from '../conventions/classify.js';
import { append } from '../util/arrays.js';
import { BoundedMap } from '../util/BoundedMap.js';
import type { SpanEventInput, SpanInput } from '../conventions/SpanInput.js';
import { Diag } from '../errors/Diag.js';
import { OutboundEvent, type EventSink } from './EventSink.js';
import { RunState, TraceBridge, type SpanNode } from './TraceBridge.js';

export interface BridgeOptions {
  readonly mode: 'emit' | 'audit';
  /**
   * True for the in-process processor: every span's parent started (and was
   * seen) before it, so an unknown parent means "not part of any run". False
   * for OTLP, where children arrive before parents and are held.
   */
  readonly parentsArriveFirst: boolean;
  /** How long held spans wait for their ancestors. Default 10000. */
  readonly orphanHoldMillis: number;
  /** Held spans across all traces. Default 50000. */
  readonly maxOrphanSpans: number;
  /** In-flight runs; the oldest is evicted past it. Default 200000. */
  readonly maxInFlightRuns: number;
  /** Spans kept per trace. Default 10000. */
  readonly maxSpansPerRun: number;
  /** Traces tracked at once. Default 400000. */
  readonly maxTraces: number;
}

const AGENT_EVENT = 'agent.event';
const EVENT_TYPE_SET = new Set<string>(EVENT_TYPES);
const REASON_SET = new Set<string>(DROP_REASONS);

/**
 * Owns the per-trace bridges of one tracewire instance: creates a trace's
 * bridge at its first span of interest, releases it once its runs ended,
 * bounds everything, and hands each event to the sink. Both span sources
 * (in-process processor, OTLP receiver) feed `startSpan` / `endSpan`.
 */
export class BridgeRegistry {
  private readonly traces = new Map<string, TraceBridge>();
  private readonly runs = new Map<string, RunState>();
  /** Held spans in hold order (oldest first) with their trace. */
  private readonly heldIndex = new Map<SpanNode, TraceBridge>();
  /**
   * Recently released traces that had runs. In-process, a trace is released
   * as soon as its runs ended; a span of it that ends later (an abandoned
   * run's top-level span, a sub-agent that outlived its run) must not open a
   * phantom run, so its late end is dropped. Bounded, oldest forgotten first.
   */
  private readonly released = new BoundedMap<string, true>(RELEASED_MEMORY);
  private readonly sweepTimer: NodeJS.Timeout;
  private closed = false;
  /** The run whose envelope part `head` is (emit). */
  private headRun: RunState | undefined;
  private head = '';
  private readonly untrack: Array<() => void> = [];
  readonly now: () => number;

  constructor(
    readonly opts: BridgeOptions,
    readonly metrics: Metrics,
    private readonly ledger: RunLedger,
    private readonly sink: EventSink | undefined,
    now?: () => number,
    readonly diag: Diag = new Diag('warn'),
  ) {
    this.now = now ?? Date.now;
    const every = Math.max(20, Math.min(1000, Math.floor(opts.orphanHoldMillis / 4) || 20));
    this.sweepTimer = setInterval(() => this.sweep(), every);
    this.sweepTimer.unref();
    this.untrack.push(metrics.tracesInFlight.track(() => this.traces.size), metrics.heldSpans.track(() => this.heldIndex.size));
  }

  get traceCount(): number {
    return this.traces.size;
  }
  get runCount(): number {
    return this.runs.size;
  }
  get heldCount(): number {
    return this.heldIndex.size;
  }

  /** A span started (or was exported before it ended). */
  startSpan(span: SpanInput): void {
    this.handle(span, false);
  }

  /** A span ended (or arrived ended). */
  endSpan(span: SpanInput): void {
    this.handle(span, true);
  }

  private handle(span: SpanInput, ended: boolean): void {
    if (this.closed) return;
    let tb = this.traces.get(span.traceId);
    if (tb === undefined) {
      if (this.opts.parentsArriveFirst && !isCandidate(span)) return;
      if (ended && this.released.has(span.traceId)) {
        this.lateEnd(span);
        return;
      }
      if (this.traces.size >= this.opts.maxTraces) this.evictOldestTrace();
      tb = new TraceBridge(span.traceId, this);
      this.traces.set(span.traceId, tb);
    } else if (this.opts.parentsArriveFirst && !tb.nodes.has(span.spanId)) {
      // In-process: a non-lifecycle span whose parent we never saw is outside every run.
      const parent = span.parentSpanId ? tb.nodes.get(span.parentSpanId) : undefined;
      if (parent === undefined && !isCandidate(span)) return;
    }
    tb.lastSeenMs = this.now();
    tb.handle(span, ended);
    this.maybeRelease(tb);
  }

  // ---- called by TraceBridge -------------------------------------------------

  openRun(tb: TraceBridge, top: SpanNode): RunState {
    if (this.runs.size >= this.opts.maxInFlightRuns) {
      const oldest = this.runs.values().next().value as RunState;
      this.evicted('max_runs');
      this.releaseRun(oldest);
      this.ledger.evict(oldest.record);
    }
    const runId = `${tb.traceId}-${top.spanId}`;
    const record = new RunRecord(runId, tb.traceId, top.spanId, top.name ?? 'unknown', top.startMs, this.now());
    const run = new RunState(runId, tb, top, record);
    this.runs.set(runId, run);
    tb.activeRuns++;
    tb.runs = append(tb.runs, run);
    this.ledger.open(record);
    return run;
  }

  resolveUser(run: RunState, user: string): void {
    run.record.user = user;
    const pending = run.unrouted;
    if (pending === undefined) return;
    run.unrouted = undefined;
    for (const ev of pending) {
      ev.user = user;
      this.publish(ev);
    }
  }

  /**
   * Record one event of `run` (the ledger's expected event) and, in emit
   * mode, serialise it once and hand it to the sink. `data` is the JSON text
   * of the event's `data` object (built by the caller from a fixed shape).
   */
  emit(run: RunState, node: SpanNode, type: EventType, tsMs: number, data: string): void {
    const rec = run.record;
    if (run.ended || rec.judgement !== undefined) {
      // The run already completed: emitting now would break "agent_completed last".
      this.metrics.eventsDropped.inc({ type, reason: 'late_span' });
      return;
    }
    if (rec.events.length >= this.opts.maxSpansPerRun * 2) {
      this.metrics.eventsDropped.inc({ type, reason: 'overflow' });
      return;
    }
    const seq = ++run.seq;
    const evRec = rec.addEvent(seq, type, node.spanId, tsMs);
    this.metrics.eventsEmitted.inc({ type });
    if (this.opts.mode === 'audit' || this.sink === undefined) return;
    const conv = node.conv ?? rec.conversation;
    // Serialised once per event, by hand: the same bytes as JSON.stringify of
    // the envelope (its shape is fixed), several times faster. The run's part
    // is kept for the run last serialised: a run's events come in bursts.
    if (run !== this.headRun) {
      this.headRun = run;
      this.head = `,"run_id":${jsonString(run.id)},"trace_id":${jsonString(run.trace.traceId)},"span_id":`;
    }
    const agent = node.agentName;
    const payload =
      `{"type":"${type}"${this.head}${jsonString(node.spanId)},"seq":${seq},"ts":"${isoTime(tsMs)}",` +
      `"agent":${agent === undefined ? 'null' : jsonString(agent)},"conversation_id":${conv === undefined ? 'null' : jsonString(conv)},` +
      `"data":${data}}`;
    const ev = new OutboundEvent(rec.user ?? '', conv, run.id, run.trace.traceId, seq, type, payload, evRec, rec, node.hookAt);
    if (rec.user === undefined) {
      (run.unrouted ??= []).push(ev);
      return;
    }
    this.publish(ev);
  }

  /** A lifecycle span of a released trace ended: its completion cannot be emitted after the run's end. */
  private lateEnd(span: SpanInput): void {
    const kind = classify(span).kind;
    if (kind === 'agent') this.metrics.eventsDropped.inc({ type: 'agent_completed', reason: 'late_span' });
    else if (kind === 'tool') this.metrics.eventsDropped.inc({ type: 'tool_completed', reason: 'late_span' });
  }

  private publish(ev: OutboundEvent): void {
    try {
      this.sink!.publish(ev);
    } catch (err) {
      // A faulty sink must never reach span.end(): count it, the event stays undelivered.
      this.metrics.internalErrors.inc({ component: 'sink' });
      this.diag.repeated('sink_fault', 'BridgeRegistry', (n) => `${n} event(s) failed in the sink: ${(err as Error)?.stack ?? String(err)}`);
      this.ledger.markDropped(ev.run, ev.record, 'send_failed');
    }
  }

  endRun(run: RunState, endMs: number): void {
    if (run.ended) return;
    if (run.unrouted !== undefined) {
      for (const ev of run.unrouted) this.ledger.markDropped(run.record, ev.record, 'no_user');
      run.unrouted = undefined;
    }
    this.releaseRun(run);
    this.ledger.ended(run.record, endMs);
    try {
      this.sink?.runEnded?.(run.id);
    } catch {
      this.metrics.internalErrors.inc({ component: 'sink' });
    }
  }

  /** The ledger judged a run before its top-level span ended (abandoned, evicted, interrupted). */
  forgetRun(record: RunRecord): void {
    const run = this.runs.get(record.runId);
    if (run !== undefined) this.releaseRun(run);
  }

  private releaseRun(run: RunState): void {
    if (run.ended) return;
    run.ended = true;
    this.runs.delete(run.id);
    run.trace.activeRuns--;
    this.maybeRelease(run.trace);
  }

  outsideRun(node: SpanNode): void {
    // A thinking or tool span with no agent above it: not part of any run.
    void node;
  }

  noteSpanEvents(tb: TraceBridge, node: SpanNode, events: readonly SpanEventInput[]): void {
    if (this.opts.mode !== 'audit') return;
    const mine = events.filter((e) => e.name === AGENT_EVENT);
    if (mine.length === 0) return;
    if (!node.anchored) {
      (node.pendingAudit ??= []).push(...mine);
      return;
    }
    const owner = tb.lifecycleOwner(node);
    const run = owner?.run;
    // Outcomes recorded after the run was judged cannot change its verdict.
    if (owner === undefined || run === undefined || run.record.judgement !== undefined) return;
    for (const e of mine) {
      const type = e.attributes['agent.event.type'];
      if (typeof type !== 'string' || !EVENT_TYPE_SET.has(type)) continue;
      const outcome = e.attributes['agent.event.outcome'] === 'delivered' ? 'delivered' : 'dropped';
      const r = e.attributes['agent.event.reason'];
      const reason = typeof r === 'string' && REASON_SET.has(r) ? (r as DropReason) : undefined;
      const pending = (run.record.auditPending ??= []);
      // Bounded like the run's events: a backend cannot report more outcomes than there are events to match.
      if (pending.length >= this.opts.maxSpansPerRun * 2) {
        this.evicted('max_spans');
        continue;
      }
      pending.push({ spanId: owner.spanId, type: type as EventType, outcome, reason });
    }
  }

  held(tb: TraceBridge, node: SpanNode): void {
    this.heldIndex.set(node, tb);
    if (this.heldIndex.size > this.opts.maxOrphanSpans) {
      const [oldest, otb] = this.heldIndex.entries().next().value as [SpanNode, TraceBridge];
      this.evicted('max_orphans');
      otb.forceAnchor(oldest);
    }
  }

  unheld(node: SpanNode): void {
    this.heldIndex.delete(node);
  }

  evicted(reason: EvictionReason): void {
    this.metrics.evictions.inc({ reason });
  }

  // ---- lifecycle -------------------------------------------------------------

  private maybeRelease(tb: TraceBridge): void {
    if (tb.activeRuns > 0 || tb.heldCount > 0) return;
    if (!this.opts.parentsArriveFirst && !tb.localRootEnded) return;
    // OTLP: a trace whose runs completed stays until the idle sweep, so a span
    // that arrives after its run (a later or reordered request) finds its
    // ancestors and is dropped as late_span, instead of being held as an
    // orphan and opening a phantom run of its own.
    if (!this.opts.parentsArriveFirst && tb.runs !== undefined) return;
    if (this.traces.get(tb.traceId) === tb) {
      this.traces.delete(tb.traceId);
      if (tb.runs !== undefined) this.released.set(tb.traceId, true);
    }
  }

  private evictOldestTrace(): void {
    const [id, tb] = this.traces.entries().next().value as [string, TraceBridge];
    this.traces.delete(id);
    this.evicted('max_traces');
    for (const n of tb.heldNodes()) this.heldIndex.delete(n);
    for (const run of tb.runs ?? []) {
      if (run.ended) continue;
      this.releaseRun(run);
      this.ledger.evict(run.record);
    }
    // Its spans that end later must not open a phantom run of the same id.
    if (tb.runs !== undefined) this.released.set(id, true);
  }

  /** Give up on held spans past the hold time; drop idle traces with nothing in flight. */
  sweep(): void {
    const now = this.now();
    for (const [node, tb] of [...this.heldIndex]) {
      if (node.heldAtMs + this.opts.orphanHoldMillis > now) break;
      this.evicted('orphan_timeout');
      tb.forceAnchor(node);
      this.maybeRelease(tb);
    }
    if (!this.opts.parentsArriveFirst) {
      const idle = Math.max(this.opts.orphanHoldMillis, 1000);
      for (const [id, tb] of this.traces) {
        if (tb.activeRuns === 0 && tb.heldCount === 0 && tb.lastSeenMs + idle <= now) {
          this.traces.delete(id);
        }
      }
    }
  }

  close(): void {
    this.closed = true;
    clearInterval(this.sweepTimer);
    for (const u of this.untrack) u();
  }
}

const RELEASED_MEMORY = 65_536;

let isoSecond = Number.NaN;
let isoPrefix = '';
/** `new Date(ms).toISOString()`, with the part up to the second cached (events come in time order). */
export function isoTime(ms: number): string {
  const sec = Math.floor(ms / 1000);
  if (sec !== isoSecond) {
    const d = new Date(sec * 1000);
    if (Number.isNaN(d.getTime())) return new Date(ms).toISOString();
    isoSecond = sec;
    isoPrefix = d.toISOString().slice(0, 20);
  }
  const frac = Math.floor(ms - sec * 1000);
  return `${isoPrefix}${frac < 10 ? '00' : frac < 100 ? '0' : ''}${frac}Z`;
}

// eslint-disable-next-line no-control-regex -- control characters are exactly what JSON must escape
const NEEDS_ESCAPE = /["\\\u0000-\u001f\ud800-\udfff]/;
/** JSON.stringify(s) for a string: most ids and names need no escaping, and the test is cheaper. */
export function jsonString(s: string): string {
  return NEEDS_ESCAPE.test(s) ? JSON.stringify(s) : `"${s}"`;
}

/** Could this span start a run (is it a lifecycle span by name or attributes)? Cheap pre-check. */
function isCandidate(span: SpanInput): boolean {
  const a = span.attributes;
  if (a['gen_ai.operation.name'] !== undefined || a['openinference.span.kind'] !== undefined || a['traceloop.span.kind'] !== undefined) return true;
  if (a['llm.request.type'] !== undefined || a['ai.operationId'] !== undefined) return true;
  const n = span.name;
  return n.startsWith('invoke_') || n.startsWith('execute_tool') || n.startsWith('ai.') || n.startsWith('chat ');
}
