import { DROP_REASONS, EVENT_TYPES, type DropReason, type EventType, type EvictionReason, type Metrics } from '../audit/Metrics.js';
import type { EventRecord, RunRecord, SpanSummary } from '../audit/RunRecord.js';
import type { RunLedger } from '../audit/RunLedger.js';
import { classify, UNROUTABLE_USER } from '../conventions/classify.js';
import { BoundedMap } from '../util/BoundedMap.js';
import { Fifo, NumberFifo } from '../util/Fifo.js';
import { EvictionOrder } from '../util/EvictionOrder.js';
import type { SpanEventInput, SpanInput } from '../conventions/SpanInput.js';
import { Diag } from '../errors/Diag.js';
import { eventData } from './eventData.js';
import { OutboundEvent, type EventSink } from './EventSink.js';
import { END_TYPE, RunState, TraceBridge, type SpanNode, type TraceMemory } from './TraceBridge.js';

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
  /** Spans kept as nodes across all traces; past it the oldest traces are given up (see `shedSpans`). Default: no such bound. */
  readonly maxSpansInFlight?: number;
}

/** A span waiting for its ancestors. */
interface Held {
  readonly tb: TraceBridge;
  readonly atMs: number;
  /** Audit mode: agent.event span events it carries, noted once it is anchored. */
  audit: SpanEventInput[] | undefined;
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
  /** The traces in `traces`, oldest first (what `maxTraces` evicts when no trace is kept only for late spans). */
  private readonly traceOrder = new EvictionOrder<TraceBridge>((tb) => this.traces.get(tb.traceId) === tb);
  /**
   * OTLP: traces kept only for late spans (their runs ended, their root
   * ended, nothing held), in the order they got there: what `maxTraces`
   * gives up first, so a burst of short runs does not evict the trace of a
   * run still in flight. An entry stops counting when its trace opens a run
   * or holds a span again (`TraceBridge.doneEntry` is cleared).
   */
  private readonly doneOrder = new EvictionOrder<DoneEntry>((e) => e.tb.doneEntry === e && this.traces.get(e.tb.traceId) === e.tb);
  /**
   * The same entries while their traces still keep spans as nodes (their
   * runs wait for their verdicts; once judged, a trace keeps only span ids):
   * what `maxSpansInFlight` gives up first. Traces kept as ids free nothing.
   */
  private readonly doneWithNodes = new EvictionOrder<DoneEntry>((e) => e.tb.doneEntry === e && e.tb.nodeCount > 0 && this.traces.get(e.tb.traceId) === e.tb);
  /** In-flight runs in open order, for evicting the oldest at maxInFlightRuns (runs end in any order). */
  private readonly runQ = new EvictionOrder<RunState>((r) => !r.ended);
  private liveRuns = 0;
  /** Spans kept as nodes by the traces in `traces` (their TraceBridges report them: `nodesKept`). */
  private spanNodes = 0;
  /** Held spans: their trace, since when, and audit events they carry. */
  private readonly heldIndex = new Map<SpanNode, Held>();
  /** Held spans in hold order (what the orphan sweep and `maxOrphanSpans` give up first). */
  private readonly heldOrder = new EvictionOrder<SpanNode>((node) => this.heldIndex.has(node));
  /**
   * Recently released traces that had runs. In-process, a trace is released
   * as soon as its runs ended; a span of it that ends later (an abandoned
   * run's top-level span, a sub-agent that outlived its run) must not open a
   * phantom run, so its late end is dropped. Bounded, oldest forgotten first.
   * With each, its lifecycle spans in a run that had not ended (usually
   * none): their late ends count in their runs' verdicts (`openRunMembers`).
   */
  private readonly released = new BoundedMap<string, true | Map<string, string>>(RELEASED_MEMORY);
  /**
   * OTLP: what traces let go leave for their later spans (`TraceBridge.memory`):
   * a trace released with no run (a request span that ended and was exported
   * before the agent run it started in the background), or dropped as idle
   * after its runs were judged, if it has spans outside its runs. Their span
   * ids with the user and conversation each passes on: a span of the trace
   * arriving later finds its parent at once and inherits from it, instead of
   * waiting `orphanHoldMillis` as an orphan; and the runs' span ids when there
   * are few, so a late span below them is still late. A trace whose runs are
   * its roots (most traces under load) leaves nothing. Bounded: the oldest
   * trace is forgotten first (its later spans then wait as orphans).
   */
  private readonly memory = new BoundedMap<string, TraceMemory>(RELEASED_MEMORY);
  private readonly sweepTimer: NodeJS.Timeout;
  private closed = false;
  /** See handle(). */
  private hookAt: number | undefined;
  /** OTLP: ids of traces waiting for their idle check (not the traces: a released one is not kept), and when each was queued (ascending). */
  private readonly idleQ = new Fifo<string>();
  private readonly idleAt = new NumberFifo();
  private readonly idleMillis: number;
  private readonly untrack: Array<() => void> = [];
  readonly now: () => number;
  /**
   * The trace of the last span handled (spans of a trace mostly come one
   * after another: an OTLP request lists them together, and an in-process
   * run's hooks drain together), so a trace's second and later spans skip
   * the lookup in `traces`. Cleared whenever a trace leaves `traces`.
   */
  private lastTrace: TraceBridge | undefined;
  /**
   * Inside `ingest()` (an OTLP request's spans): the time of the batch (one
   * clock read for all its spans), and the spans held during it, indexed for
   * the orphan sweep only at its end if still held. Most are children that
   * arrive before their parent in the same request: those never enter
   * `heldIndex`.
   */
  private batchAtMs: number | undefined;
  private readonly batchHeld: Array<{ tb: TraceBridge; node: SpanNode }> = [];

  constructor(
    readonly opts: BridgeOptions,
    readonly metrics: Metrics,
    private readonly ledger: RunLedger,
    private readonly sink: EventSink | undefined,
    now?: () => number,
    readonly diag: Diag = new Diag('warn'),
  ) {
    this.now = now ?? Date.now;
    this.idleMillis = Math.max(opts.orphanHoldMillis, 1000);
    const every = Math.max(20, Math.min(1000, Math.floor(opts.orphanHoldMillis / 4) || 20));
    this.sweepTimer = setInterval(() => this.sweep(), every);
    this.sweepTimer.unref();
    this.untrack.push(metrics.tracesInFlight.track(() => this.traces.size), metrics.heldSpans.track(() => this.heldIndex.size));
  }

  get traceCount(): number {
    return this.traces.size;
  }
  /** Entries of the trace eviction queue, live and forgotten (tests check it stays bounded). */
  get traceOrderSize(): number {
    return this.traceOrder.length;
  }
  /** Entries of the late-span-only trace order, live and not (tests check it stays bounded). */
  get doneOrderSize(): number {
    return this.doneOrder.length;
  }
  /** Entries of the held-span order, live and given up (tests check it stays bounded). */
  get heldOrderSize(): number {
    return this.heldOrder.length;
  }
  get runCount(): number {
    return this.liveRuns;
  }
  get heldCount(): number {
    return this.heldIndex.size;
  }
  /** Spans kept as nodes across all traces (bounded by maxSpansInFlight). */
  get spanNodeCount(): number {
    return this.spanNodes;
  }

  /**
   * One OTLP request's spans, in request order (a span with no end time
   * starts, one with an end time ends). `onFault` is told of a span that
   * failed in the bridge; the others still go through.
   */
  ingest(spans: readonly SpanInput[], onFault: (err: unknown) => void): void {
    // Re-entered (a sink that feeds spans back), the spans join the batch in progress.
    const outer = this.batchAtMs === undefined;
    if (outer) this.batchAtMs = this.now();
    try {
      for (const span of spans) {
        try {
          this.handle(span, span.endMs !== undefined);
        } catch (err) {
          onFault(err);
        }
      }
    } finally {
      if (outer) {
        this.batchAtMs = undefined;
        this.indexBatchHeld();
      }
    }
  }

  /**
   * Spans held during a batch and still waiting at its end enter the hold
   * index (in hold order); those waiting for a remote parent that did not
   * come in the request are anchored below nothing now, as they would have
   * been at once outside a request (a remote parent is not waited for).
   */
  private indexBatchHeld(): void {
    const b = this.batchHeld;
    if (b.length === 0) return;
    let remote: Array<{ tb: TraceBridge; node: SpanNode }> | undefined;
    for (const e of b) {
      if (!e.node.held || e.node.anchored || this.traces.get(e.tb.traceId) !== e.tb) continue;
      // Its remote parent absent (a parent that is here but waits itself is waited for, as for any span).
      if (e.node.parentRemote && e.tb.node(e.node.parentSpanId!) === undefined) (remote ??= []).push(e);
      else this.held(e.tb, e.node);
    }
    b.length = 0;
    if (remote === undefined) return;
    for (const { tb, node } of remote) {
      tb.forceAnchor(node);
      this.maybeRelease(tb);
    }
  }

  /** A span whose remote parent is not here waits for the end of the request it came in (OTLP, emit mode) if it has no user of its own. */
  waitsInRequest(node: SpanNode): boolean {
    return this.batchAtMs !== undefined && this.opts.mode === 'emit' && !this.opts.parentsArriveFirst && !node.ownUser;
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
    const last = this.lastTrace;
    let tb = last !== undefined && last.traceId === span.traceId ? last : this.traces.get(span.traceId);
    if (tb === undefined) {
      if (this.opts.parentsArriveFirst && !isCandidate(span)) return;
      if (ended && this.released.has(span.traceId)) {
        this.lateEnd(span);
        return;
      }
      // In process the start was seen: the end of a thinking or tool span whose trace was not kept is outside
      // every run (and was counted at its start). An agent recognised only at its end opens its run now.
      if (ended && this.opts.parentsArriveFirst && classify(span, this.metrics.spanValuesLimitedCounts).kind !== 'agent') return;
      if (this.traces.size >= this.opts.maxTraces) this.evictOldestTrace();
      tb = new TraceBridge(span.traceId, this);
      this.traces.set(span.traceId, tb);
      this.traceOrder.push(tb);
      if (!this.opts.parentsArriveFirst) {
        this.idleQ.push(span.traceId);
        this.idleAt.push(this.batchAtMs ?? this.now());
        const m = this.memory.get(span.traceId);
        if (m !== undefined) {
          this.memory.delete(span.traceId);
          tb.restore(m);
        }
      }
    } else if (this.opts.parentsArriveFirst && tb.node(span.spanId) === undefined) {
      // In-process: a non-lifecycle span whose parent we never saw is outside every run.
      const parent = span.parentSpanId ? tb.node(span.parentSpanId) : undefined;
      if (parent === undefined && !isCandidate(span)) return;
    }
    // The idle sweep (OTLP only) needs it; an in-process trace is released when its runs end.
    if (!this.opts.parentsArriveFirst) tb.lastSeenMs = this.batchAtMs ?? this.now();
    this.lastTrace = tb;
    // performance.now() of the hook or request that made events emittable (delivery latency).
    this.hookAt = span.hookAt;
    tb.handle(span, ended);
    this.maybeRelease(tb);
    if (this.spanNodes > (this.opts.maxSpansInFlight ?? Number.POSITIVE_INFINITY)) this.shedSpans();
  }

  /**
   * Past maxSpansInFlight: give up traces until the spans kept as nodes are
   * within the bound again. First the traces kept only for late spans that
   * still keep nodes (their runs ended and wait for their verdicts, which
   * eviction does not change), oldest first; then the oldest traces with
   * nodes, whose runs in flight are evicted. Traces kept as span ids only are
   * passed over (they free nothing), at most SHED_SCAN of them per call; the
   * last trace with nodes stays (a single trace is bounded by maxSpansPerRun).
   */
  private shedSpans(): void {
    const max = this.opts.maxSpansInFlight!;
    for (let e = this.doneWithNodes.oldest(); e !== undefined && this.spanNodes > max; e = this.doneWithNodes.oldest()) this.evictTrace(e.tb, 'max_spans_total');
    for (let scan = 0; this.spanNodes > max && scan < SHED_SCAN; scan++) {
      const tb = this.traceOrder.oldest();
      if (tb === undefined || tb.nodeCount === this.spanNodes) return;
      if (tb.nodeCount === 0) this.traceOrder.requeueOldest();
      else this.evictTrace(tb, 'max_spans_total');
    }
  }

  // ---- called by TraceBridge -------------------------------------------------

  /** A trace keeps `n` more spans as nodes (fewer when negative). */
  nodesKept(n: number): void {
    this.spanNodes += n;
  }

  openRun(tb: TraceBridge, top: SpanNode): RunState {
    if (this.liveRuns >= this.opts.maxInFlightRuns) {
      const oldest = this.runQ.oldest();
      if (oldest !== undefined) {
        this.evicted('max_runs');
        this.releaseRun(oldest);
        this.ledger.evict(oldest);
      }
    }
    const run = new RunState(tb, top, this.batchAtMs ?? this.now());
    this.notDone(tb);
    this.runQ.push(run);
    this.liveRuns++;
    tb.activeRuns++;
    tb.runCount++;
    this.ledger.open(run);
    return run;
  }

  resolveUser(run: RunState, user: string): void {
    // A run that met a user id over the limit is never routed (no later span's user may claim it).
    if (run.unroutable) return;
    if (user === UNROUTABLE_USER) {
      run.unroutable = true;
      return;
    }
    run.user = user;
    const pending = run.unrouted;
    if (pending === undefined) return;
    run.unrouted = undefined;
    for (const ev of pending) this.publish(ev);
  }

  /**
   * Record one event of `run` (the ledger's expected event) and, in emit
   * mode, hand it to the sink. Its time is the span's start (start events)
   * or end (completions), read from the span node, and so is its `data`
   * object: written now for a span that has not ended (its attributes may
   * still change at its end), else when a connection first needs the event
   * (an event held and given up is never written).
   */
  emit(run: RunState, node: SpanNode, type: EventType): void {
    if (run.ended || run.judgement !== undefined) {
      // The run already completed: emitting now would break "agent_completed last".
      this.lateRunEvent(run, node, type);
      return;
    }
    if (run.events.length >= this.opts.maxSpansPerRun * 2) {
      this.metrics.eventsDropped.inc({ type, reason: 'overflow' });
      return;
    }
    const seq = ++run.seq;
    // A lifecycle node (kind set) is the span summary its events point to.
    const evRec = run.addEvent(seq, type, node as SpanSummary);
    this.metrics.eventsEmitted.inc({ type });
    if (this.opts.mode === 'audit' || this.sink === undefined) return;
    let data: string | undefined;
    if (!node.seenEnd) {
      data = eventData(type, node);
      // charCodeAt flattens `data` (built by concatenation): an event kept for a while keeps one string, not its pieces.
      data.charCodeAt(0);
    } else if (run.user !== undefined && node.conv !== undefined && this.sink.publishRecord !== undefined) {
      // Everything the event carries is read from its record: the sink makes it if a connection takes it now.
      this.publishRecord(evRec);
      return;
    }
    const ev = new OutboundEvent(node.conv ?? run.conversation, evRec, this.hookAt, node.agentName, data);
    if (run.user === undefined) {
      (run.unrouted ??= []).push(ev);
      return;
    }
    this.publish(ev);
  }

  private publishRecord(record: EventRecord): void {
    try {
      this.sink!.publishRecord!(record, this.hookAt, this.batchAtMs ?? this.now());
    } catch (err) {
      this.sinkFault(err, record);
    }
  }

  /** A lifecycle span of a released trace ended: its completion cannot be emitted after the run's end. */
  private lateEnd(span: SpanInput): void {
    const open = this.released.get(span.traceId);
    const runId = open instanceof Map ? open.get(span.spanId) : undefined;
    if (runId !== undefined) {
      // A span of a run that had not ended when the trace was released: late in that run, if the ledger still has it.
      (open as Map<string, string>).delete(span.spanId);
      const run = this.ledger.get(runId);
      const node = run instanceof RunState ? (run.spans.find((x) => x.spanId === span.spanId) as SpanNode | undefined) : undefined;
      const type = node?.kind === undefined ? undefined : END_TYPE[node.kind];
      if (node !== undefined && type !== undefined) {
        node.seenEnd = true;
        node.endMs = span.endMs;
        this.lateRunEvent(run as RunState, node, type);
        return;
      }
    }
    const kind = classify(span, this.metrics.spanValuesLimitedCounts).kind;
    const late = kind === undefined ? undefined : END_TYPE[kind];
    if (late !== undefined) this.lateEvent(late);
  }

  private publish(ev: OutboundEvent): void {
    try {
      this.sink!.publish(ev);
    } catch (err) {
      this.sinkFault(err, ev.record);
    }
  }

  /** A faulty sink must never reach span.end(): count it, the event stays undelivered. */
  private sinkFault(err: unknown, record: EventRecord): void {
    this.metrics.internalErrors.inc({ component: 'sink' });
    this.diag.repeated('sink_fault', 'BridgeRegistry', (n) => `${n} event(s) failed in the sink: ${(err as Error)?.stack ?? String(err)}`);
    this.ledger.markDropped(record.run, record, 'send_failed');
  }

  endRun(run: RunState, endMs: number): void {
    if (run.ended) return;
    if (run.unrouted !== undefined) {
      for (const ev of run.unrouted) this.ledger.markDropped(run, ev.record, 'no_user');
      run.unrouted = undefined;
    }
    this.releaseRun(run);
    this.ledger.ended(run, endMs);
    try {
      this.sink?.runEnded?.(run.runId);
    } catch {
      this.metrics.internalErrors.inc({ component: 'sink' });
    }
  }

  /** The ledger judged a run before its top-level span ended (abandoned, evicted, interrupted). */
  forgetRun(record: RunRecord): void {
    if (record instanceof RunState && record.trace?.reg === this) this.releaseRun(record);
  }

  private releaseRun(run: RunState): void {
    const tb = run.trace;
    if (tb === undefined) return; // released already
    // A released run keeps no hold on its trace (a judged run stays in the ledger for the runs API).
    run.trace = undefined;
    run.top = undefined;
    this.liveRuns--;
    this.runQ.left();
    tb.activeRuns--;
    this.maybeRelease(tb);
  }

  /**
   * The ledger judged a run. OTLP keeps a trace whose runs ended (for late
   * spans); once nothing of it is in flight, it lets go of its judged runs.
   */
  judged(record: RunRecord): void {
    if (this.opts.parentsArriveFirst) return;
    const tb = this.traces.get(record.traceId);
    if (tb !== undefined && tb.activeRuns === 0 && tb.heldCount === 0) {
      tb.compact();
      if (tb.doneEntry !== undefined && tb.nodeCount === 0) this.doneWithNodes.left();
    }
  }

  /**
   * An event of a span of `run` that arrived or changed after the run
   * completed. It is never emitted (the run's `agent_completed` was its last
   * event), but until the verdict it is one of the run's expected events:
   * dropped as late_span, so the verdict says what the user missed (audit
   * mode: judged from the backend's outcomes like the others). After the
   * verdict it only counts.
   */
  private lateRunEvent(run: RunState, node: SpanNode, type: EventType): void {
    if (run.judgement !== undefined || run.events.length >= this.opts.maxSpansPerRun * 2) {
      this.lateEvent(type);
      return;
    }
    const evRec = run.addEvent(++run.seq, type, node as SpanSummary);
    if (this.opts.mode === 'audit') this.metrics.eventsEmitted.inc({ type });
    else this.ledger.markDropped(run, evRec, 'late_span');
  }

  /** An event of a span inside a run that already ended (and was let go): dropped as late. */
  lateEvent(type: EventType): void {
    this.metrics.eventsDropped.inc({ type, reason: 'late_span' });
  }

  noteSpanEvents(tb: TraceBridge, node: SpanNode, events: readonly SpanEventInput[]): void {
    if (this.opts.mode !== 'audit') return;
    const mine = events.filter((e) => e.name === AGENT_EVENT);
    if (mine.length === 0) return;
    if (!node.anchored) {
      const h = this.heldIndex.get(node);
      if (h !== undefined) (h.audit ??= []).push(...mine);
      return;
    }
    const owner = tb.lifecycleOwner(node);
    const run = owner?.run;
    // Outcomes recorded after the run was judged cannot change its verdict.
    if (owner === undefined || run === undefined || run.judgement !== undefined) return;
    for (const e of mine) {
      const type = e.attributes['agent.event.type'];
      if (typeof type !== 'string' || !EVENT_TYPE_SET.has(type)) continue;
      const outcome = e.attributes['agent.event.outcome'] === 'delivered' ? 'delivered' : 'dropped';
      const r = e.attributes['agent.event.reason'];
      const reason = typeof r === 'string' && REASON_SET.has(r) ? (r as DropReason) : undefined;
      const audit = (run.audit ??= { outcomes: 0, pending: undefined });
      const pending = (audit.pending ??= []);
      // Bounded like the run's events: a backend cannot report more outcomes than there are events to match.
      if (pending.length >= this.opts.maxSpansPerRun * 2) {
        this.evicted('max_spans');
        continue;
      }
      pending.push({ spanId: owner.spanId, type: type as EventType, outcome, reason });
    }
  }

  held(tb: TraceBridge, node: SpanNode): void {
    this.notDone(tb);
    // In a batch (emit mode: audit mode keeps the events a held span carries in its index entry), indexed at its end.
    if (this.batchAtMs !== undefined && this.opts.mode === 'emit') {
      this.batchHeld.push({ tb, node });
      return;
    }
    this.heldIndex.set(node, { tb, atMs: this.now(), audit: undefined });
    this.heldOrder.push(node);
    if (this.heldIndex.size > this.opts.maxOrphanSpans) {
      this.evicted('max_orphans');
      this.giveUp(this.heldOrder.oldest()!);
    }
  }

  /** A held span is anchored (or given up): returns the audit events it carried. */
  unheld(node: SpanNode): readonly SpanEventInput[] | undefined {
    const h = this.heldIndex.get(node);
    if (h === undefined) return undefined;
    this.heldIndex.delete(node);
    this.heldOrder.left();
    return h.audit;
  }

  /**
   * Stop waiting for a held span's ancestors (it is anchored as a local
   * root), then look at its trace again: with nothing held it may now be
   * kept only for late spans, or be done with.
   */
  private giveUp(node: SpanNode): void {
    const tb = this.heldIndex.get(node)!.tb;
    tb.forceAnchor(node);
    // forceAnchor takes it out of the index; if it did not, it still must not stay at the front.
    this.unheld(node);
    this.maybeRelease(tb);
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
    if (!this.opts.parentsArriveFirst && tb.runCount > 0) {
      if (tb.doneEntry === undefined && this.traces.get(tb.traceId) === tb) {
        const e: DoneEntry = { tb };
        tb.doneEntry = e;
        this.doneOrder.push(e);
        this.doneWithNodes.push(e);
      }
      return;
    }
    if (this.traces.get(tb.traceId) === tb) {
      this.forgetTrace(tb);
      if (tb.runCount > 0) this.released.set(tb.traceId, (this.opts.parentsArriveFirst ? tb.openRunMembers() : undefined) ?? true);
      else if (!this.opts.parentsArriveFirst) this.remember(tb);
    }
  }

  /** `tb` leaves `traces` (it is the trace kept under its id). */
  private forgetTrace(tb: TraceBridge): void {
    this.traces.delete(tb.traceId);
    this.spanNodes -= tb.nodeCount;
    if (this.lastTrace === tb) this.lastTrace = undefined;
    this.traceOrder.left();
    this.notDone(tb);
  }

  /** The trace opens a run or holds a span: it is no longer kept only for late spans. */
  private notDone(tb: TraceBridge): void {
    if (tb.doneEntry === undefined) return;
    tb.doneEntry = undefined;
    this.doneOrder.left();
    this.doneWithNodes.left();
  }

  /**
   * At maxTraces: the oldest trace kept only for late spans (its runs are
   * judged or waiting for their verdict, which eviction does not change);
   * if there is none, the oldest trace, whose runs in flight are evicted.
   */
  private evictOldestTrace(): void {
    this.evictTrace(this.doneOrder.oldest()?.tb ?? this.traceOrder.oldest()!, 'max_traces');
  }

  /** Give up a trace (bounded state): its held spans and its runs in flight go with it (judged abandoned, evicted). */
  private evictTrace(tb: TraceBridge, reason: 'max_traces' | 'max_spans_total'): void {
    const id = tb.traceId;
    this.forgetTrace(tb);
    this.evicted(reason);
    for (const n of tb.heldNodes()) this.unheld(n);
    for (const node of tb.nodeList()) {
      const run = node.run;
      if (run === undefined || run.ended || run.top !== node) continue;
      this.releaseRun(run);
      this.ledger.evict(run);
    }
    // Its spans that end later must not open a phantom run of the same id.
    if (tb.runCount > 0) this.released.set(id, true);
  }

  /** Give up on held spans past the hold time; drop idle traces with nothing in flight. */
  sweep(): void {
    const now = this.now();
    // Events the sweep releases were not made emittable by a hook: no delivery latency for them.
    this.hookAt = undefined;
    // In hold order, stopping at the first span still within its hold time.
    for (let node = this.heldOrder.oldest(); node !== undefined; node = this.heldOrder.oldest()) {
      if (this.heldIndex.get(node)!.atMs + this.opts.orphanHoldMillis > now) break;
      this.evicted('orphan_timeout');
      this.giveUp(node);
    }
    if (!this.opts.parentsArriveFirst) this.dropIdleTraces(now);
  }

  /**
   * OTLP: forget traces with nothing in flight and no span for the idle time.
   * Each trace is checked when its turn in the idle queue comes (queued when
   * created, again when found still busy), so a pass costs what it checks,
   * not every trace; a trace goes between one and two idle times after its
   * last span.
   */
  private dropIdleTraces(now: number): void {
    const idle = this.idleMillis;
    while (this.idleAt.length > 0 && this.idleAt.peek()! + idle <= now) {
      this.idleAt.shift();
      const id = this.idleQ.shift()!;
      const tb = this.traces.get(id);
      if (tb === undefined) continue; // released or evicted already
      if (tb.activeRuns === 0 && tb.heldCount === 0 && tb.lastSeenMs + idle <= now) {
        this.forgetTrace(tb);
        this.evicted('trace_idle');
        this.remember(tb);
      } else {
        this.idleQ.push(id);
        this.idleAt.push(now);
      }
    }
  }

  /** Keep what a trace let go leaves for its later spans, if anything (see `memory`). */
  private remember(tb: TraceBridge): void {
    const m = tb.memory(MAX_ANCESTORS);
    if (m.ancestors.length > 0) this.memory.set(tb.traceId, m);
  }

  close(): void {
    this.closed = true;
    clearInterval(this.sweepTimer);
    for (const u of this.untrack) u();
  }
}

/** An entry of the late-span-only order (see `doneOrder`). */
export interface DoneEntry {
  readonly tb: TraceBridge;
}

const RELEASED_MEMORY = 65_536;
/** Traces kept as span ids only passed over per call of shedSpans (each is moved behind the others). */
const SHED_SCAN = 4096;
/** Span ids outside its runs a trace let go leaves for its later spans (see `memory`). */
const MAX_ANCESTORS = 64;

/** Could this span start a run (is it a lifecycle span by name or attributes)? Cheap pre-check. */
function isCandidate(span: SpanInput): boolean {
  const a = span.attributes;
  if (a['gen_ai.operation.name'] !== undefined || a['openinference.span.kind'] !== undefined || a['traceloop.span.kind'] !== undefined) return true;
  if (a['llm.request.type'] !== undefined || a['ai.operationId'] !== undefined) return true;
  const n = span.name;
  return n.startsWith('invoke_') || n.startsWith('execute_tool') || n.startsWith('ai.') || n.startsWith('chat ');
}
