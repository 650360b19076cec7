import { afterEach, describe, expect, it } from 'vitest';
import { DEMO_EXPECTED, runDemoAgent } from '../../src/demo/demoAgent.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connectAcked, inProcessTracer, startTestSidecar } from '../helpers.js';

let sc: Sidecar | undefined;
afterEach(async () => {
  await sc?.close();
  sc = undefined;
});

describe('in-process run', () => {
  it('streams the supervisor run to its user in causal order with seq 1..N', async () => {
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    const client = await connectAcked(sc, 'alice');
    const ids = await runDemoAgent(tracer, { user: 'alice' });
    await client.until((c) => c.events.length >= DEMO_EXPECTED.length, 5000, 'all events');
    const evs = client.events;
    expect(evs.map((e) => e.type)).toEqual(DEMO_EXPECTED.map((e) => e.type));
    expect(evs.map((e) => e.seq)).toEqual(DEMO_EXPECTED.map((_, i) => i + 1));
    expect(evs.map((e) => e.agent)).toEqual(DEMO_EXPECTED.map((e) => e.agent));
    expect(new Set(evs.map((e) => e.run_id))).toEqual(new Set([`${ids.traceId}-${ids.spanId}`]));
    const failed = evs.find((e) => e.type === 'tool_completed' && (e.data as { tool: string }).tool === 'fetch_page');
    expect(failed?.data).toMatchObject({ status: 'error', call_id: 'call_2', error: 'tool_error' });
    expect(evs.at(-1)).toMatchObject({ type: 'agent_completed', agent: 'supervisor', conversation_id: 'conv-alice' });
    expect(evs[4]!.data).toMatchObject({ agent: 'researcher', parent_agent: 'supervisor' });
  });
});

describe('a tool still running when its agent returns (in process)', () => {
  it('its completion cannot follow agent_completed: the run is judged partial with late_span, not complete', async () => {
    const { context, trace } = await import('@opentelemetry/api');
    const verdicts: Array<{ runId: string; verdict?: string }> = [];
    sc = await startTestSidecar({ graceMillis: 300, onVerdict: (r) => verdicts.push({ runId: r.runId }) });
    const { tracer } = inProcessTracer(sc);
    const client = await connectAcked(sc, 'dora');
    const top = tracer.startSpan('invoke_agent planner', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'planner', 'user.id': 'dora' } });
    const tool = tracer.startSpan('execute_tool fetch', { attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'fetch' } }, trace.setSpan(context.active(), top));
    top.end();
    await client.until((c) => c.events.some((e) => e.type === 'agent_completed'), 5000, 'agent_completed');
    tool.end();
    const runId = `${top.spanContext().traceId}-${top.spanContext().spanId}`;
    await client.until(() => verdicts.length === 1, 5000, 'the verdict');
    expect(client.events.map((e) => e.type)).toEqual(['agent_started', 'tool_executing', 'agent_completed']);
    expect(sc.tw.ledger.get(runId)!.judgement).toMatchObject({ verdict: 'partial', expected: 4, delivered: 3, reasons: { late_span: 1 }, undeliveredByType: { tool_completed: 1 } });
    // The runs API shows the completion the user missed, after the run's last delivered event.
    const detail = (await (await fetch(`${sc.publicUrl}/api/runs/${runId}`)).json()) as { events: Array<{ seq: number; type: string; outcome: string; reason?: string }> };
    expect(detail.events.at(-1)).toMatchObject({ seq: 4, type: 'tool_completed', outcome: 'dropped', reason: 'late_span' });
    // A span that ends after the verdict changes nothing.
    const other = tracer.startSpan('execute_tool again', { attributes: { 'gen_ai.operation.name': 'execute_tool' } }, trace.setSpan(context.active(), top));
    other.end();
    await new Promise((r) => setTimeout(r, 50));
    expect(sc.tw.ledger.get(runId)!.judgement!.expected).toBe(4);
    client.close();
  });
});

describe('a sub-agent whose GenAI attributes are set after its start (in process)', () => {
  it('its events carry its own name once it is known to be an agent', async () => {
    const { context, trace } = await import('@opentelemetry/api');
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    const client = await connectAcked(sc, 'eli');
    const top = tracer.startSpan('invoke_agent supervisor', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'supervisor', 'user.id': 'eli' } });
    const sub = tracer.startSpan('researcher-step', {}, trace.setSpan(context.active(), top));
    await new Promise((r) => setTimeout(r, 5));
    sub.setAttributes({ 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'researcher' });
    sub.end();
    top.end();
    await client.until((c) => c.events.length === 4, 5000, 'four events');
    expect(client.events.map((e) => [e.type, e.agent, (e.data as { agent?: string }).agent])).toEqual([
      ['agent_started', 'supervisor', 'supervisor'],
      ['agent_started', 'researcher', 'researcher'],
      ['agent_completed', 'researcher', 'researcher'],
      ['agent_completed', 'supervisor', 'supervisor'],
    ]);
    expect(client.events[1]!.data).toMatchObject({ parent_agent: 'supervisor' });
    client.close();
  });
});

describe('lifecycle spans outside every run (in process)', () => {
  it('are counted once each in tracewire_lifecycle_spans_total, and emit nothing', async () => {
    const { metricValue } = await import('../helpers.js');
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    const client = await connectAcked(sc, 'fin');
    for (let i = 0; i < 3; i++) tracer.startSpan('chat gpt-4o', { attributes: { 'gen_ai.operation.name': 'chat', 'user.id': 'fin' } }).end();
    tracer.startSpan('execute_tool lone', { attributes: { 'gen_ai.operation.name': 'execute_tool' } }).end();
    await new Promise((r) => setTimeout(r, 50));
    expect(await metricValue(sc, 'tracewire_lifecycle_spans_total', { kind: 'thinking' })).toBe(3);
    expect(await metricValue(sc, 'tracewire_lifecycle_spans_total', { kind: 'tool' })).toBe(1);
    expect(sc.tw.inProcessBridges.traceCount).toBe(0);
    expect(client.events).toEqual([]);
    client.close();
  });
});

describe('a user id from W3C baggage (in process)', () => {
  it('routes the run; one over 1,024 characters is ignored as absent (never cut into another user\'s id)', async () => {
    const { context, propagation, trace } = await import('@opentelemetry/api');
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    const short = 'b'.repeat(100);
    const client = await connectAcked(sc, short);
    // Someone whose id is the first 1,024 characters of the long one.
    const prefix = await connectAcked(sc, 'b'.repeat(1024));
    const runWithBaggage = (user: string): string => {
      const ctx = propagation.setBaggage(context.active(), propagation.createBaggage({ 'user.id': { value: user } }));
      const top = tracer.startSpan('invoke_agent planner', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'planner' } }, ctx);
      // A child inherits its user from its parent's context (the processor's inheritance, not classify's).
      tracer.startSpan('execute_tool lookup', { attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'lookup' } }, trace.setSpan(ctx, top)).end();
      top.end();
      return `${top.spanContext().traceId}-${top.spanContext().spanId}`;
    };
    const ok = runWithBaggage(short);
    const long = runWithBaggage('b'.repeat(2000));
    await client.until((c) => c.events.length === 4, 5000, 'the short-id run');
    await new Promise((r) => setTimeout(r, 300));
    expect(sc.tw.ledger.get(ok)!.judgement).toMatchObject({ verdict: 'complete' });
    expect(sc.tw.ledger.get(long)!.judgement).toMatchObject({ verdict: 'missing_events', mainReason: 'no_user' });
    expect(prefix.events).toEqual([]);
    client.close();
    prefix.close();
  });
});
