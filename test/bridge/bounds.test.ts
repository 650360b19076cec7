import { context, trace, type Span } from '@opentelemetry/api';
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import type { SpanInput } from '../../src/conventions/SpanInput.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connectAcked, inProcessTracer, metricValue, startTestSidecar, until } from '../helpers.js';

/**
 * Bounded in-flight state: max runs, max spans per run (trace), max held
 * orphan spans (and their hold time), max traces. Each bound is set small
 * through the Tracewire options; every eviction is counted in
 * tracewire_bridge_evictions_total with its reason, the gauges never pass the
 * bound, and evicted runs get a verdict that says so.
 */

let sc: Sidecar | undefined;
afterEach(async () => {
  await sc?.close();
  sc = undefined;
});

const evictions = (s: Sidecar, reason?: string): Promise<number> => metricValue(s, 'tracewire_bridge_evictions_total', reason ? { reason } : {});
const runsTotal = (s: Sidecar, labels: Record<string, string> = {}): Promise<number> => metricValue(s, 'tracewire_runs_total', labels);
const settle = (ms = 50): Promise<void> => new Promise((r) => setTimeout(r, ms));

const AGENT = { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'supervisor' };
const TOOL = { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'lookup' };

function startRun(tracer: ReturnType<typeof inProcessTracer>['tracer'], user: string): Span {
  return tracer.startSpan('invoke_agent supervisor', { attributes: { ...AGENT, 'user.id': user } });
}

const hex = (bytes: number): string => randomBytes(bytes).toString('hex');

/** An ended span as the OTLP receiver hands it to the bridge. */
function otlpSpan(o: { traceId: string; spanId?: string; parentSpanId?: string; name: string; attributes: Record<string, unknown> }): SpanInput {
  const now = Date.now();
  return { traceId: o.traceId, spanId: o.spanId ?? hex(8), parentSpanId: o.parentSpanId, name: o.name, startMs: now - 5, endMs: now, attributes: o.attributes, statusCode: 0 };
}

/** An ended top-level agent span of `user` in `traceId`, as the OTLP receiver hands it over. */
const otlpAgent = (traceId: string, user: string): SpanInput => otlpSpan({ traceId, name: 'invoke_agent supervisor', attributes: { ...AGENT, 'user.id': user } });

/** A long run exported live: its agent span starts, and one tool below it ends. Returns the agent span. */
function startLongRun(b: Sidecar['tw']['otlpBridges'], user: string): SpanInput {
  const long = otlpAgent(hex(16), user);
  b.startSpan({ ...long, endMs: undefined });
  b.endSpan(otlpSpan({ traceId: long.traceId, parentSpanId: long.spanId, name: 'execute_tool lookup', attributes: TOOL }));
  return long;
}

describe('bounded in-flight state', () => {
  it('maxInFlightRuns: the oldest run is evicted (max_runs), judged abandoned with reason evicted; its late end opens nothing', async () => {
    sc = await startTestSidecar({ maxInFlightRuns: 3 });
    const { tracer } = inProcessTracer(sc);
    const tops = Array.from({ length: 5 }, () => startRun(tracer, 'ann'));
    await until(() => sc!.tw.inProcessBridges.runCount === 3 && sc!.tw.ledger.inFlightCount === 3, 2000, 'three runs in flight');
    expect(await evictions(sc, 'max_runs')).toBe(2);
    expect(await evictions(sc)).toBe(2);
    expect(await metricValue(sc, 'tracewire_runs_in_flight')).toBe(3);
    expect(await runsTotal(sc, { verdict: 'abandoned', reason: 'evicted' })).toBe(2);
    const first = sc.tw.ledger.get(`${tops[0]!.spanContext().traceId}-${tops[0]!.spanContext().spanId}`)!;
    expect(first.judgement).toMatchObject({ verdict: 'abandoned', reasons: { evicted: 1 } });

    for (const t of tops) t.end();
    await until(() => sc!.tw.ledger.inFlightCount === 0, 2000, 'the rest judged');
    await settle(150);
    // 5 runs, 5 verdicts: the evicted runs' late ends did not reopen them.
    expect(await runsTotal(sc)).toBe(5);
    expect(await evictions(sc)).toBe(2);
  });

  it('maxTraces: the oldest trace is evicted (max_traces) with its runs; the gauge stays at the bound', async () => {
    sc = await startTestSidecar({ maxTraces: 3 });
    const { tracer } = inProcessTracer(sc);
    const tops = Array.from({ length: 5 }, () => startRun(tracer, 'bea'));
    await until(() => sc!.tw.ledger.inFlightCount === 3, 2000, 'three runs in flight');
    expect(sc.tw.inProcessBridges.traceCount).toBe(3);
    expect(await metricValue(sc, 'tracewire_traces_in_flight')).toBe(3);
    expect(await evictions(sc, 'max_traces')).toBe(2);
    expect(await runsTotal(sc, { verdict: 'abandoned', reason: 'evicted' })).toBe(2);
    for (const t of tops.slice(2)) t.end();
    await until(() => sc!.tw.ledger.inFlightCount === 0, 2000, 'the kept runs judged');
    await settle(150);
    expect(await runsTotal(sc)).toBe(5);
    expect(await evictions(sc)).toBe(2);
  });

  it('maxTraces: the late end of an evicted run opens no phantom run and evicts nothing else', async () => {
    sc = await startTestSidecar({ maxTraces: 3 });
    const { tracer } = inProcessTracer(sc);
    const tops = Array.from({ length: 5 }, () => startRun(tracer, 'bea'));
    await until(() => sc!.tw.ledger.inFlightCount === 3, 2000, 'three runs in flight');
    for (const t of tops) t.end();
    await until(() => sc!.tw.ledger.inFlightCount === 0, 2000, 'all judged');
    await settle(150);
    expect(await evictions(sc)).toBe(2);
    expect(await runsTotal(sc)).toBe(5);
  });

  it('maxTraces: with traces forgotten out of order, the oldest kept trace is the one evicted, and the eviction queue stays bounded', async () => {
    sc = await startTestSidecar({ maxTraces: 4000 });
    const b = sc.tw.inProcessBridges;
    // A long run opens first; 3,000 short runs after it each end (their traces are forgotten while it stays at the front).
    const long = otlpAgent(hex(16), 'old');
    b.startSpan({ ...long, endMs: undefined });
    let maxQueue = 0;
    for (let i = 0; i < 3000; i++) {
      const s = otlpAgent(hex(16), 'short');
      b.startSpan({ ...s, endMs: undefined });
      b.endSpan(s);
      maxQueue = Math.max(maxQueue, b.traceOrderSize);
    }
    expect(b.traceCount).toBe(1);
    // Forgotten entries are compacted away past 1,024 of them (they are then most of the queue).
    expect(maxQueue).toBeLessThanOrEqual(1 + 1025 + 1);
    expect(b.traceOrderSize).toBeLessThan(1100);
    expect(await evictions(sc)).toBe(0);

    // Fill the table with runs still in flight: the next trace evicts the long run's trace, the oldest kept.
    const open = Array.from({ length: 3999 }, () => otlpAgent(hex(16), 'later'));
    for (const s of open) b.startSpan({ ...s, endMs: undefined });
    expect(b.traceCount).toBe(4000);
    expect(await evictions(sc, 'max_traces')).toBe(0);
    b.startSpan({ ...otlpAgent(hex(16), 'last'), endMs: undefined });
    expect(await evictions(sc, 'max_traces')).toBe(1);
    expect(sc.tw.ledger.get(`${long.traceId}-${long.spanId}`)!.judgement).toMatchObject({ verdict: 'abandoned', reasons: { evicted: 1 } });
    // The next one evicts the oldest of the rest, in the order they opened.
    b.startSpan({ ...otlpAgent(hex(16), 'last'), endMs: undefined });
    const firstOpen = open[0]!;
    expect(sc.tw.ledger.get(`${firstOpen.traceId}-${firstOpen.spanId}`)!.judgement).toMatchObject({ verdict: 'abandoned' });
    expect(sc.tw.ledger.get(`${open[1]!.traceId}-${open[1]!.spanId}`)!.judgement).toBeUndefined();
    expect(b.traceOrderSize).toBe(4000);
  });

  it('maxTraces (OTLP): traces kept only for late spans go first; a run still in flight keeps its trace and is delivered whole', async () => {
    sc = await startTestSidecar({ maxTraces: 5 }, true);
    const client = await connectAcked(sc, 'long');
    const b = sc.tw.otlpBridges;
    const long = startLongRun(b, 'long');
    // 20 short runs after it, each whole in one request: their traces stay for late spans until the bound gives them up.
    const short = Array.from({ length: 20 }, () => otlpAgent(hex(16), 'short'));
    for (const s of short) b.ingest([s], (err) => { throw err; });
    const longRun = sc.tw.ledger.get(`${long.traceId}-${long.spanId}`)!;
    expect(longRun.judgement).toBeUndefined();
    expect(b.traceCount).toBe(5);
    expect(await evictions(sc, 'max_traces')).toBe(16);
    expect(b.doneOrderSize).toBeLessThanOrEqual(21);
    // A late span of an evicted short trace is still dropped as late (no phantom run).
    b.endSpan(otlpSpan({ traceId: short[0]!.traceId, parentSpanId: short[0]!.spanId, name: 'execute_tool lookup', attributes: TOOL }));
    expect(await metricValue(sc, 'tracewire_events_dropped_total', { reason: 'late_span' })).toBe(1);

    // The long run ends: every event reaches its user, and it is judged complete.
    b.endSpan(long);
    await client.until((c) => c.events.some((e) => e.type === 'agent_completed'), 2000, 'the long run completed');
    expect(client.events.map((e) => e.type)).toEqual(['agent_started', 'tool_executing', 'tool_completed', 'agent_completed']);
    expect(client.events.map((e) => e.seq)).toEqual([1, 2, 3, 4]);
    await until(() => longRun.judgement !== undefined, 2000, 'the long run judged');
    expect(longRun.judgement).toMatchObject({ verdict: 'complete', expected: 4, delivered: 4 });
    expect(await runsTotal(sc, { reason: 'evicted' })).toBe(0);
  });

  it('maxTraces (OTLP): a kept trace that opens a new run is no longer given up first; with every trace in flight, the oldest goes', async () => {
    sc = await startTestSidecar({ maxTraces: 3 }, true);
    const b = sc.tw.otlpBridges;
    const ingest = (spans: SpanInput[]): void => b.ingest(spans, (err) => { throw err; });
    // Trace A: one run, complete (kept for late spans); then a second run in it, live.
    const a = hex(16);
    ingest([otlpAgent(a, 'ann')]);
    const second = otlpAgent(a, 'ann');
    b.startSpan({ ...second, endMs: undefined });
    // Trace B: complete. Trace C: live.
    const bTrace = hex(16);
    ingest([otlpAgent(bTrace, 'bob')]);
    const c = otlpAgent(hex(16), 'cat');
    b.startSpan({ ...c, endMs: undefined });
    expect(b.traceCount).toBe(3);
    // A fourth trace: B goes (kept only for late spans), though A is older.
    const d = otlpAgent(hex(16), 'dan');
    b.startSpan({ ...d, endMs: undefined });
    expect(await evictions(sc, 'max_traces')).toBe(1);
    expect(sc.tw.ledger.get(`${a}-${second.spanId}`)!.judgement).toBeUndefined();
    // Every trace now has a run in flight: the next one evicts the oldest, A, and its live run.
    b.startSpan({ ...otlpAgent(hex(16), 'eve'), endMs: undefined });
    expect(await evictions(sc, 'max_traces')).toBe(2);
    expect(sc.tw.ledger.get(`${a}-${second.spanId}`)!.judgement).toMatchObject({ verdict: 'abandoned', reasons: { evicted: 1 } });
    expect(sc.tw.ledger.get(`${c.traceId}-${c.spanId}`)!.judgement).toBeUndefined();
    expect(sc.tw.ledger.get(`${d.traceId}-${d.spanId}`)!.judgement).toBeUndefined();
  });

  it('maxTraces (OTLP): a kept trace whose late orphan is given up at maxOrphanSpans is again among the first given up', async () => {
    sc = await startTestSidecar({ maxTraces: 3, maxOrphanSpans: 1 }, true);
    const b = sc.tw.otlpBridges;
    const orphanIn = (traceId: string): SpanInput => otlpSpan({ traceId, parentSpanId: hex(8), name: 'GET', attributes: { 'http.request.method': 'GET' } });
    // B: a run in flight (the oldest trace). A: a complete run, then a late span whose parent never comes (held).
    const live = otlpAgent(hex(16), 'bea');
    b.startSpan({ ...live, endMs: undefined });
    const a = hex(16);
    b.endSpan(otlpAgent(a, 'ann'));
    b.endSpan(orphanIn(a));
    expect(b.heldCount).toBe(1);
    // C: another orphan; past maxOrphanSpans the oldest held span, A's, is given up.
    b.endSpan(orphanIn(hex(16)));
    expect(await evictions(sc, 'max_orphans')).toBe(1);
    expect(b.traceCount).toBe(3);
    // D: at maxTraces, A goes (kept only for late spans again), not B with its run in flight.
    b.startSpan({ ...otlpAgent(hex(16), 'dan'), endMs: undefined });
    expect(await evictions(sc, 'max_traces')).toBe(1);
    expect(sc.tw.ledger.get(`${live.traceId}-${live.spanId}`)!.judgement).toBeUndefined();
    expect(await runsTotal(sc, { reason: 'evicted' })).toBe(0);
  });

  it('maxSpansInFlight (in process): past the bound the oldest trace is given up with its run (max_spans_total); the spans kept stay within it', async () => {
    sc = await startTestSidecar({ maxSpansInFlight: 10 });
    const { tracer } = inProcessTracer(sc);
    const b = sc.tw.inProcessBridges;
    // Four runs of an agent and two tools, all still running: 12 spans against a bound of 10.
    const tops: Span[] = [];
    for (let r = 0; r < 4; r++) {
      const top = startRun(tracer, 'sam');
      tops.push(top);
      const ctx = trace.setSpan(context.active(), top);
      tracer.startSpan('execute_tool lookup', { attributes: TOOL }, ctx);
      tracer.startSpan('execute_tool lookup', { attributes: TOOL }, ctx);
      await settle(5);
      expect(b.spanNodeCount).toBeLessThanOrEqual(10);
    }
    expect(await evictions(sc, 'max_spans_total')).toBe(1);
    expect(b.traceCount).toBe(3);
    const first = sc.tw.ledger.get(`${tops[0]!.spanContext().traceId}-${tops[0]!.spanContext().spanId}`)!;
    expect(first.judgement).toMatchObject({ verdict: 'abandoned', reasons: { evicted: 3 } });
    for (const t of tops) t.end();
    await until(() => b.traceCount === 0 && sc!.tw.ledger.inFlightCount === 0, 2000, 'the rest released and judged');
    expect(b.spanNodeCount).toBe(0);
  });

  it('maxSpansInFlight (OTLP): traces kept only for late spans go first; a run in flight keeps its spans and is delivered whole', async () => {
    sc = await startTestSidecar({ maxSpansInFlight: 10, graceMillis: 60_000 }, true);
    const client = await connectAcked(sc, 'long');
    const b = sc.tw.otlpBridges;
    const long = startLongRun(b, 'long');
    // Short runs of an agent and three tools, whole in one request: kept as nodes until their verdicts (60 s away).
    const short = Array.from({ length: 6 }, () => {
      const s = otlpAgent(hex(16), 'short');
      const tools = Array.from({ length: 3 }, () => otlpSpan({ traceId: s.traceId, parentSpanId: s.spanId, name: 'execute_tool lookup', attributes: TOOL }));
      b.ingest([...tools, s], (err) => {
        throw err;
      });
      expect(b.spanNodeCount).toBeLessThanOrEqual(10);
      return s;
    });
    // 2 + 6 × 4 spans against 10: the four oldest short traces went, the long run's stayed.
    expect(await evictions(sc, 'max_spans_total')).toBe(4);
    expect(b.traceCount).toBe(3);
    expect(sc.tw.ledger.get(`${long.traceId}-${long.spanId}`)!.judgement).toBeUndefined();
    // The short runs given up had ended: they are still judged, after their grace period, as they stand.
    expect(sc.tw.ledger.get(`${short[0]!.traceId}-${short[0]!.spanId}`)!.endMs).toBeDefined();
    b.endSpan(long);
    await client.until((c) => c.events.some((e) => e.type === 'agent_completed'), 2000, 'the long run completed');
    expect(client.events.map((e) => e.type)).toEqual(['agent_started', 'tool_executing', 'tool_completed', 'agent_completed']);
    expect(await runsTotal(sc, { reason: 'evicted' })).toBe(0);
  });

  it('maxSpansInFlight (OTLP): traces kept as span ids only are passed over; the oldest trace with spans goes', async () => {
    sc = await startTestSidecar({ maxSpansInFlight: 10, graceMillis: 0 }, true);
    const b = sc.tw.otlpBridges;
    // Five short runs, judged at once: their traces stay for late spans as span ids only.
    const short = Array.from({ length: 5 }, () => otlpAgent(hex(16), 'short'));
    for (const s of short) b.ingest([otlpSpan({ traceId: s.traceId, parentSpanId: s.spanId, name: 'execute_tool lookup', attributes: TOOL }), s], (err) => { throw err; });
    await until(() => b.spanNodeCount === 0, 2000, 'the short runs judged and their traces kept as ids');
    expect(b.traceCount).toBe(5);
    // Two live runs of an agent and five tools: 12 spans against 10.
    const live = [otlpAgent(hex(16), 'ann'), otlpAgent(hex(16), 'bob')];
    for (const l of live) {
      b.startSpan({ ...l, endMs: undefined });
      for (let i = 0; i < 5; i++) b.startSpan({ ...otlpSpan({ traceId: l.traceId, parentSpanId: l.spanId, name: 'execute_tool lookup', attributes: TOOL }), endMs: undefined });
    }
    expect(await evictions(sc, 'max_spans_total')).toBe(1);
    expect(b.spanNodeCount).toBe(6);
    expect(sc.tw.ledger.get(`${live[0]!.traceId}-${live[0]!.spanId}`)!.judgement).toMatchObject({ verdict: 'abandoned', reasons: { evicted: 6 } });
    expect(sc.tw.ledger.get(`${live[1]!.traceId}-${live[1]!.spanId}`)!.judgement).toBeUndefined();
    // The short traces were passed over: a late span of one is still found and dropped as late.
    expect(b.traceCount).toBe(6);
    b.endSpan(otlpSpan({ traceId: short[0]!.traceId, parentSpanId: short[0]!.spanId, name: 'execute_tool lookup', attributes: TOOL }));
    expect(await metricValue(sc, 'tracewire_events_dropped_total', { reason: 'late_span' })).toBe(2);
  });

  it('maxSpansPerRun: spans past the bound are dropped and counted (max_spans), once each (OTLP)', async () => {
    sc = await startTestSidecar({ maxSpansPerRun: 5 }, true);
    const client = await connectAcked(sc, 'cy');
    const traceId = hex(16);
    const top = hex(8);
    const b = sc.tw.otlpBridges;
    // A live export of the agent span, its 10 tool spans (ended), then the agent span's end.
    const agent = otlpSpan({ traceId, spanId: top, name: 'invoke_agent supervisor', attributes: { ...AGENT, 'user.id': 'cy' } });
    b.startSpan({ ...agent, endMs: undefined });
    for (let i = 0; i < 10; i++) b.endSpan(otlpSpan({ traceId, parentSpanId: top, name: 'execute_tool lookup', attributes: TOOL }));
    b.endSpan(agent);
    // Agent + 4 tools kept: agent_started, 4 × (tool_executing, tool_completed), agent_completed.
    await client.until((c) => c.events.length >= 10, 2000, 'the kept events');
    await settle();
    expect(client.events.map((e) => e.seq)).toEqual(Array.from({ length: 10 }, (_, i) => i + 1));
    expect(client.events.at(-1)!.type).toBe('agent_completed');
    expect(await evictions(sc, 'max_spans')).toBe(6);
    expect(await evictions(sc)).toBe(6);
  });

  // Known gap in src/bridge (reported, not owned here): OTLP exporters send children before their parents, so
  // in a trace with more than maxSpansPerRun spans the first spans to arrive fill the trace and the top-level
  // agent span, which ends and arrives last, is the one dropped: no run opens, the held tools time out as
  // orphans, and the run gets no verdict at all (only max_spans evictions say something happened).
  it('maxSpansPerRun: OTLP children-first, the run is still opened and judged', async () => {
    sc = await startTestSidecar({ maxSpansPerRun: 5, orphanHoldMillis: 100 }, true);
    const traceId = hex(16);
    const top = hex(8);
    const b = sc.tw.otlpBridges;
    for (let i = 0; i < 10; i++) b.endSpan(otlpSpan({ traceId, parentSpanId: top, name: 'execute_tool lookup', attributes: TOOL }));
    b.endSpan(otlpSpan({ traceId, spanId: top, name: 'invoke_agent supervisor', attributes: { ...AGENT, 'user.id': 'cy' } }));
    await until(() => sc!.tw.ledger.list({}).runs.length === 1, 1000, 'a run');
  });

  it('maxSpansPerRun: a run stays within the bound (in-process); dropped spans are counted', async () => {
    sc = await startTestSidecar({ maxSpansPerRun: 5 });
    const client = await connectAcked(sc, 'dee');
    const { tracer } = inProcessTracer(sc);
    const top = startRun(tracer, 'dee');
    const ctx = trace.setSpan(context.active(), top);
    for (let i = 0; i < 10; i++) tracer.startSpan('execute_tool lookup', { attributes: TOOL }, ctx).end();
    top.end();
    // Agent + 4 tools kept: agent_started, 4 × (tool_executing, tool_completed), agent_completed.
    await client.until((c) => c.events.length >= 10, 2000, 'the kept events');
    await settle();
    expect(client.events.map((e) => e.seq)).toEqual(Array.from({ length: 10 }, (_, i) => i + 1));
    const rec = sc.tw.ledger.get(client.events[0]!.run_id as string)!;
    expect(rec.events).toHaveLength(10);
    expect(await evictions(sc, 'max_spans')).toBeGreaterThanOrEqual(6);
  });

  // Known bug in src/bridge (reported, not owned here): in-process, a span dropped by maxSpansPerRun is counted at
  // its start and again at its end (TraceBridge.handle counts every call for an unknown node). Flip once fixed.
  it('maxSpansPerRun: in-process, each dropped span is counted once', async () => {
    sc = await startTestSidecar({ maxSpansPerRun: 5 });
    const { tracer } = inProcessTracer(sc);
    const top = startRun(tracer, 'dee');
    const ctx = trace.setSpan(context.active(), top);
    for (let i = 0; i < 10; i++) tracer.startSpan('execute_tool lookup', { attributes: TOOL }, ctx).end();
    top.end();
    await settle(100);
    expect(await evictions(sc, 'max_spans')).toBe(6);
  });

  it('maxOrphanSpans: held spans past the bound are given up oldest first (max_orphans); the gauge stays at the bound', async () => {
    sc = await startTestSidecar({ maxOrphanSpans: 3, orphanHoldMillis: 60_000 }, true);
    const b = sc.tw.otlpBridges;
    // Tool spans whose parent agent span never arrives.
    for (let i = 0; i < 5; i++) b.endSpan(otlpSpan({ traceId: hex(16), parentSpanId: hex(8), name: 'execute_tool lookup', attributes: TOOL }));
    expect(b.heldCount).toBe(3);
    expect(await metricValue(sc, 'tracewire_held_spans')).toBe(3);
    expect(await evictions(sc, 'max_orphans')).toBe(2);
    expect(await evictions(sc)).toBe(2);
  });

  it('maxOrphanSpans: with held spans anchored out of order, the oldest still held is given up, and the hold order stays bounded', async () => {
    sc = await startTestSidecar({ maxOrphanSpans: 2000, orphanHoldMillis: 60_000 }, true);
    const b = sc.tw.otlpBridges;
    // Agent spans whose parent never arrives: one given up becomes a run of its own (so the ledger shows which were).
    const orphanAgent = (): SpanInput => otlpSpan({ traceId: hex(16), parentSpanId: hex(8), name: 'invoke_agent supervisor', attributes: { ...AGENT, 'user.id': 'fay' } });
    const givenUp = (s: SpanInput): boolean => sc!.tw.ledger.get(`${s.traceId}-${s.spanId}`) !== undefined;
    // An orphan that stays, then 5,000 whose parents arrive right after them (each leaves the hold from behind it).
    const first = orphanAgent();
    b.endSpan(first);
    let most = 0;
    for (let i = 0; i < 5000; i++) {
      const traceId = hex(16);
      const parent = hex(8);
      b.endSpan(otlpSpan({ traceId, parentSpanId: parent, name: 'execute_tool lookup', attributes: TOOL }));
      b.endSpan(otlpSpan({ traceId, spanId: parent, name: 'GET', attributes: {} }));
      most = Math.max(most, b.heldOrderSize);
    }
    expect(b.heldCount).toBe(1);
    expect(most).toBeLessThanOrEqual(1 + 1025 + 1);
    // Fill the hold: the first orphan is the one given up, then the oldest of the rest, in hold order.
    const later = Array.from({ length: 2001 }, orphanAgent);
    for (const s of later.slice(0, 1999)) b.endSpan(s);
    expect(b.heldCount).toBe(2000);
    expect(givenUp(first)).toBe(false);
    b.endSpan(later[1999]!);
    expect(await evictions(sc, 'max_orphans')).toBe(1);
    expect(givenUp(first)).toBe(true);
    expect(givenUp(later[0]!)).toBe(false);
    b.endSpan(later[2000]!);
    expect(givenUp(later[0]!)).toBe(true);
    expect(givenUp(later[1]!)).toBe(false);
    expect(b.heldCount).toBe(2000);
    expect(b.heldOrderSize).toBe(2000);
  });

  it('orphanHoldMillis: held spans are given up after the hold time (orphan_timeout)', async () => {
    sc = await startTestSidecar({ maxOrphanSpans: 100, orphanHoldMillis: 100 }, true);
    const b = sc.tw.otlpBridges;
    for (let i = 0; i < 3; i++) b.endSpan(otlpSpan({ traceId: hex(16), parentSpanId: hex(8), name: 'execute_tool lookup', attributes: TOOL }));
    expect(b.heldCount).toBe(3);
    await until(() => b.heldCount === 0, 2000, 'hold expiry');
    expect(await evictions(sc, 'orphan_timeout')).toBe(3);
    expect(await metricValue(sc, 'tracewire_held_spans')).toBe(0);
    // A held agent span given up becomes a run of its own (its parent is outside tracewire's view).
    const traceId = hex(16);
    b.endSpan(otlpSpan({ traceId, parentSpanId: hex(8), name: 'invoke_agent supervisor', attributes: { ...AGENT, 'user.id': 'eve' } }));
    await until(() => b.heldCount === 0, 2000, 'hold expiry');
    await until(() => sc!.tw.ledger.list({}).runs.length === 1, 2000, 'a run');
    expect(await evictions(sc, 'orphan_timeout')).toBe(4);
  });

  it('many runs through small bounds leave every gauge at or under its bound, and each run gets one verdict', async () => {
    sc = await startTestSidecar({ maxInFlightRuns: 20, maxTraces: 30, maxSpansPerRun: 8 });
    const { tracer } = inProcessTracer(sc);
    const open: Span[] = [];
    let maxRuns = 0;
    let maxTraces = 0;
    for (let i = 0; i < 200; i++) {
      const top = startRun(tracer, `u-${i % 7}`);
      const ctx = trace.setSpan(context.active(), top);
      for (let j = 0; j < 10; j++) tracer.startSpan('execute_tool lookup', { attributes: TOOL }, ctx).end();
      if (i % 3 === 0) top.end();
      else open.push(top);
      await settle(0);
      maxRuns = Math.max(maxRuns, sc.tw.inProcessBridges.runCount);
      maxTraces = Math.max(maxTraces, sc.tw.inProcessBridges.traceCount);
    }
    expect(maxRuns).toBeLessThanOrEqual(20);
    expect(maxTraces).toBeLessThanOrEqual(30);
    expect(await evictions(sc, 'max_runs')).toBeGreaterThan(0);
    // Runs still open at the end are interrupted at close; count verdicts through onVerdict-free metrics.
    const s = sc;
    sc = undefined;
    await s.close();
    expect(await runsTotal(s)).toBe(200);
    void open;
  });
});
