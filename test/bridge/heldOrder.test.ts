import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import type { SpanInput } from '../../src/conventions/SpanInput.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connectAcked, metricValue, startTestSidecar } from '../helpers.js';

/**
 * OTLP spans that arrive before their ancestors are held per trace (a short
 * list, switching to a Map keyed by parent past a few spans) and released in
 * causal order when the ancestor arrives.
 */

let sc: Sidecar | undefined;
afterEach(async () => {
  await sc?.close();
  sc = undefined;
});

const hex = (bytes: number): string => randomBytes(bytes).toString('hex');
const T0 = Date.now() - 10_000;

function span(traceId: string, spanId: string, parentSpanId: string | undefined, name: string, attributes: Record<string, unknown>, at: number): SpanInput {
  return { traceId, spanId, parentSpanId, name, startMs: T0 + at, endMs: T0 + at + 1, attributes, statusCode: 0 };
}

describe('held spans (OTLP, children before parents)', () => {
  it.each([3, 20])('%i tool spans and their HTTP children arrive shuffled before the agent: events come in start order, nothing stays held', async (tools) => {
    sc = await startTestSidecar({}, true);
    const client = await connectAcked(sc, 'hu');
    const traceId = hex(16);
    const top = hex(8);
    const spans: SpanInput[] = [];
    for (let i = 0; i < tools; i++) {
      const id = hex(8);
      spans.push(span(traceId, id, top, `execute_tool t${i}`, { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': `t${i}`, 'gen_ai.tool.call.id': `c${i}` }, 10 + 10 * i));
      spans.push(span(traceId, hex(8), id, 'GET', { 'http.request.method': 'GET' }, 11 + 10 * i));
    }
    // Children first, in an order that is neither start order nor its reverse.
    spans.sort((a, b) => (a.spanId < b.spanId ? -1 : 1));
    const b = sc.tw.otlpBridges;
    for (const s of spans) b.endSpan(s);
    expect(b.heldCount).toBe(spans.length);
    b.endSpan(span(traceId, top, undefined, 'invoke_agent boss', { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'boss', 'user.id': 'hu' }, 0));
    expect(b.heldCount).toBe(0);
    const n = 2 + 2 * tools;
    await client.until((c) => c.events.length >= n, 5000, 'events');
    const evs = client.events;
    expect(evs.map((e) => e.seq)).toEqual(Array.from({ length: n }, (_, i) => i + 1));
    const expected = ['agent_started'];
    for (let i = 0; i < tools; i++) expected.push('tool_executing', 'tool_completed');
    expected.push('agent_completed');
    expect(evs.map((e) => e.type)).toEqual(expected);
    expect(evs.filter((e) => e.type === 'tool_executing').map((e) => (e.data as { tool: string }).tool)).toEqual(Array.from({ length: tools }, (_, i) => `t${i}`));
  });
});

describe('a deep chain of held spans', () => {
  it('10,000 nested tool spans (maxSpansPerRun) sent children first, then their agent: every event, in causal order, no fault', async () => {
    // 20,000 events in one burst: a buffer that takes them (the default closes a client that far behind, to resume).
    sc = await startTestSidecar({ wsMaxBufferedBytes: 64 * 1024 * 1024 }, true);
    const client = await connectAcked(sc, 'deep');
    const depth = 10_000;
    const traceId = hex(16);
    const ids = Array.from({ length: depth }, () => hex(8));
    // ids[0] the agent; ids[i] (a tool) the child of ids[i - 1]. Deepest first, in requests of 512 spans.
    const spans: SpanInput[] = [];
    for (let i = depth - 1; i >= 1; i--) spans.push(span(traceId, ids[i]!, ids[i - 1], 'execute_tool step', { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': `step${i}` }, i));
    spans.push(span(traceId, ids[0]!, undefined, 'invoke_agent deep', { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'deep', 'user.id': 'deep' }, 0));
    const faults: unknown[] = [];
    for (let i = 0; i < spans.length; i += 512) sc.tw.otlpBridges.ingest(spans.slice(i, i + 512), (err) => faults.push(err));
    expect(faults).toEqual([]);
    expect(sc.tw.otlpBridges.heldCount).toBe(0);
    const n = 2 * depth;
    await client.until((c) => c.events.length >= n, 15_000, 'every event');
    const evs = client.events;
    expect(evs.map((e) => e.seq)).toEqual(Array.from({ length: n }, (_, i) => i + 1));
    // Starts down the chain, then completions back up it.
    expect(evs[0]!.type).toBe('agent_started');
    expect(evs.slice(1, depth).map((e) => (e.data as { tool: string }).tool)).toEqual(Array.from({ length: depth - 1 }, (_, i) => `step${i + 1}`));
    expect(evs.slice(depth, n - 1).every((e) => e.type === 'tool_completed')).toBe(true);
    expect(evs.slice(depth, n - 1).map((e) => (e.data as { tool: string }).tool)).toEqual(Array.from({ length: depth - 1 }, (_, i) => `step${depth - 1 - i}`));
    expect(evs[n - 1]!.type).toBe('agent_completed');
    expect(await metricValue(sc, 'tracewire_internal_errors_total')).toBe(0);
  }, 30_000);
});

describe('one OTLP request at a time (the receiver hands the bridge each request whole)', () => {
  const agentSpan = (traceId: string, id: string, user: string): SpanInput =>
    span(traceId, id, undefined, 'invoke_agent boss', { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'boss', 'user.id': user }, 0);
  const toolSpan = (traceId: string, id: string, parent: string, name: string): SpanInput =>
    span(traceId, id, parent, `execute_tool ${name}`, { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': name }, 5);
  const noFault = (err: unknown): void => {
    throw err;
  };

  it('children before their parent in the same request hold nothing after it; a child whose parent comes in a later request waits for it', async () => {
    sc = await startTestSidecar({}, true);
    const client = await connectAcked(sc, 'bu');
    const b = sc.tw.otlpBridges;
    const [t1, t2] = [hex(16), hex(16)];
    const [top1, top2] = [hex(8), hex(8)];
    // Request 1: trace 1 whole (children first), and trace 2's tool without its agent.
    b.ingest([toolSpan(t1, hex(8), top1, 'a'), toolSpan(t2, hex(8), top2, 'b'), agentSpan(t1, top1, 'bu')], noFault);
    expect(b.heldCount).toBe(1);
    // Request 2: trace 2's agent.
    b.ingest([agentSpan(t2, top2, 'bu')], noFault);
    expect(b.heldCount).toBe(0);
    await client.until((c) => c.events.length >= 8, 5000, 'events');
    const byRun = (t: string): string[] => client.events.filter((e) => e.trace_id === t).map((e) => `${e.seq} ${e.type}`);
    for (const t of [t1, t2]) expect(byRun(t)).toEqual(['1 agent_started', '2 tool_executing', '3 tool_completed', '4 agent_completed']);
  });

  it('spans still waiting at the end of a request are bounded by maxOrphanSpans (oldest given up) and given up after orphanHoldMillis', async () => {
    sc = await startTestSidecar({ maxOrphanSpans: 2, orphanHoldMillis: 300 }, true);
    const b = sc.tw.otlpBridges;
    // Five tools whose agents never come, each in its own trace.
    b.ingest(Array.from({ length: 5 }, () => toolSpan(hex(16), hex(8), hex(8), 'lost')), noFault);
    expect(b.heldCount).toBe(2);
    expect(await metricValue(sc, 'tracewire_bridge_evictions_total', { reason: 'max_orphans' })).toBe(3);
    const deadline = Date.now() + 5000;
    while (b.heldCount > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(b.heldCount).toBe(0);
    expect(await metricValue(sc, 'tracewire_bridge_evictions_total', { reason: 'orphan_timeout' })).toBe(2);
  });

  it('a span that fails in the bridge is reported and the rest of the request still goes through', async () => {
    sc = await startTestSidecar({}, true);
    const client = await connectAcked(sc, 'fu');
    const b = sc.tw.otlpBridges;
    const t = hex(16);
    const top = hex(8);
    const broken = { ...toolSpan(t, hex(8), top, 'x'), attributes: null } as unknown as SpanInput;
    const faults: unknown[] = [];
    b.ingest([broken, toolSpan(t, hex(8), top, 'ok'), agentSpan(t, top, 'fu')], (err) => faults.push(err));
    expect(faults).toHaveLength(1);
    await client.until((c) => c.events.length >= 4, 5000, 'events');
    expect(client.events.map((e) => e.type)).toEqual(['agent_started', 'tool_executing', 'tool_completed', 'agent_completed']);
  });
});

describe('idle OTLP traces', () => {
  it('a completed trace stays for late spans, then is forgotten one to two idle times after its last span; a busy one stays', async () => {
    sc = await startTestSidecar({ orphanHoldMillis: 0 }, true); // idle time: its 1 s minimum
    const b = sc.tw.otlpBridges;
    const done = hex(16);
    const busy = hex(16);
    const agent = { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'boss', 'user.id': 'iz' };
    b.endSpan(span(done, hex(8), undefined, 'invoke_agent boss', agent, 0));
    b.startSpan({ ...span(busy, hex(8), undefined, 'invoke_agent boss', agent, 0), endMs: undefined });
    expect(b.traceCount).toBe(2);
    await new Promise((r) => setTimeout(r, 700));
    expect(b.traceCount).toBe(2); // within the idle time: late spans still find their ancestors
    const t0 = Date.now();
    while (b.traceCount > 1 && Date.now() - t0 < 3000) await new Promise((r) => setTimeout(r, 50));
    expect(b.traceCount).toBe(1); // the completed one is gone; the one with a run in flight stays
    expect(b.runCount).toBe(1);
    // Routine, counted apart from the bounds (it does not alert).
    expect(await metricValue(sc, 'tracewire_bridge_evictions_total', { reason: 'trace_idle' })).toBe(1);
    expect(await metricValue(sc, 'tracewire_bridge_evictions_total')).toBe(1);
  });
});
