import { BasicTracerProvider } from '@opentelemetry/sdk-trace-base';
import { afterEach, describe, expect, it } from 'vitest';
import type { RunRecord } from '../../src/audit/RunRecord.js';
import type { OutboundEvent } from '../../src/bridge/EventSink.js';
import { DEMO_EXPECTED, runDemoAgent } from '../../src/demo/demoAgent.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connectAcked, inProcessTracer, metricValue, startTestSidecar, until } from '../helpers.js';

let sc: Sidecar | undefined;
afterEach(async () => {
  await sc?.close();
  sc = undefined;
});

const sinkErrors = (s: Sidecar): Promise<number> => metricValue(s, 'tracewire_internal_errors_total', { component: 'sink' });
const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 50));

describe('faults inside the hub never reach the traced code', () => {
  it('a hub whose publish throws: runDemoAgent resolves, every event is counted as a sink error and dropped as send_failed', async () => {
    const verdicts: RunRecord[] = [];
    sc = await startTestSidecar({ onVerdict: (r) => verdicts.push(r) });
    const { tracer } = inProcessTracer(sc);
    const client = await connectAcked(sc, 'alice');
    let calls = 0;
    // Both ways the bridge hands the hub an event: as an object, or as its ledger record.
    sc.tw.hub.publish = sc.tw.hub.publishRecord = () => {
      calls++;
      throw new Error('hub exploded');
    };
    await expect(runDemoAgent(tracer, { user: 'alice' })).resolves.toMatchObject({ traceId: expect.any(String) });
    await until(() => verdicts.length === 1, 5000, 'verdict');
    expect(calls).toBe(DEMO_EXPECTED.length);
    expect(await sinkErrors(sc)).toBe(DEMO_EXPECTED.length);
    expect(await metricValue(sc, 'tracewire_events_dropped_total', { reason: 'send_failed' })).toBe(DEMO_EXPECTED.length);
    expect(verdicts[0]!.judgement).toMatchObject({ verdict: 'missing_events', delivered: 0, expected: DEMO_EXPECTED.length, reasons: { send_failed: DEMO_EXPECTED.length } });
    expect(client.events).toEqual([]);
  });

  it('span.end() and tracer.startSpan() called directly never throw, even when the hooks are drained synchronously', async () => {
    sc = await startTestSidecar();
    const { tracer, provider } = inProcessTracer(sc);
    sc.tw.hub.publish = sc.tw.hub.publishRecord = () => {
      throw new TypeError('boom');
    };
    const agent = tracer.startSpan('invoke_agent a', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'user.id': 'alice' } });
    expect(() => provider.forceFlush()).not.toThrow();
    const tool = tracer.startSpan('execute_tool t');
    expect(() => tool.end()).not.toThrow();
    expect(() => agent.end()).not.toThrow();
    await provider.forceFlush();
    await settle();
    expect(await sinkErrors(sc)).toBe(2);
    // A tool span in a trace of its own (no agent above it) is no run: nothing published.
    const lone = tracer.startSpan('execute_tool lone');
    lone.end();
    await settle();
    expect(await sinkErrors(sc)).toBe(2);
  });

  it('a fault for one event drops only that event; the others still reach the client in order', async () => {
    const verdicts: RunRecord[] = [];
    sc = await startTestSidecar({ onVerdict: (r) => verdicts.push(r) });
    const { tracer } = inProcessTracer(sc);
    const client = await connectAcked(sc, 'alice');
    const hub = sc.tw.hub;
    const real = hub.publish.bind(hub);
    hub.publish = (ev: OutboundEvent) => {
      if (ev.type === 'tool_executing' && ev.seq === 3) throw new Error('one bad event');
      real(ev);
    };
    await runDemoAgent(tracer, { user: 'alice' });
    await client.until((c) => c.events.length >= DEMO_EXPECTED.length - 1, 5000, 'events');
    await until(() => verdicts.length === 1, 5000, 'verdict');
    await settle();
    const seqs = DEMO_EXPECTED.map((_, i) => i + 1).filter((s) => s !== 3);
    expect(client.events.map((e) => e.seq)).toEqual(seqs);
    expect(client.events.map((e) => e.type)).toEqual(DEMO_EXPECTED.filter((_, i) => i !== 2).map((e) => e.type));
    expect(await sinkErrors(sc)).toBe(1);
    expect(verdicts[0]!.judgement).toMatchObject({ verdict: 'partial', delivered: DEMO_EXPECTED.length - 1, reasons: { send_failed: 1 }, undeliveredByType: { tool_executing: 1 } });
  });

  it('a sink whose runEnded throws is counted; the run is still judged complete', async () => {
    const verdicts: RunRecord[] = [];
    sc = await startTestSidecar({ onVerdict: (r) => verdicts.push(r) });
    const { tracer } = inProcessTracer(sc);
    const client = await connectAcked(sc, 'alice');
    sc.tw.hub.runEnded = () => {
      throw new Error('replay store exploded');
    };
    await runDemoAgent(tracer, { user: 'alice' });
    await client.until((c) => c.events.length >= DEMO_EXPECTED.length, 5000, 'events');
    await until(() => verdicts.length === 1, 5000, 'verdict');
    expect(await sinkErrors(sc)).toBe(1);
    expect(verdicts[0]!.judgement?.verdict).toBe('complete');
  });

  it('a bridge fault is caught in the processor and counted as component="bridge"', async () => {
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    const bridges = sc.tw.inProcessBridges;
    bridges.startSpan = () => {
      throw new Error('bridge exploded');
    };
    await expect(runDemoAgent(tracer, { user: 'alice' })).resolves.toBeDefined();
    await settle();
    // 7 span starts, each one a caught fault.
    expect(await metricValue(sc, 'tracewire_internal_errors_total', { component: 'bridge' })).toBe(7);
  });

  it('a throwing onVerdict callback is counted as component="ledger" and the next run is still judged', async () => {
    let n = 0;
    sc = await startTestSidecar({
      onVerdict: () => {
        n++;
        throw new Error('logger exploded');
      },
    });
    const { tracer } = inProcessTracer(sc);
    await runDemoAgent(tracer, { user: 'alice' });
    await runDemoAgent(tracer, { user: 'alice' });
    await until(() => n === 2, 5000, 'two verdicts');
    expect(await metricValue(sc, 'tracewire_internal_errors_total', { component: 'ledger' })).toBe(2);
  });
});

describe('the span processor after shutdown()', () => {
  it('drains what was queued, then its hooks are no-ops', async () => {
    sc = await startTestSidecar();
    const p = sc.tw.spanProcessor();
    const provider = new BasicTracerProvider({ spanProcessors: [p] });
    const tracer = provider.getTracer('test');
    const client = await connectAcked(sc, 'alice');

    // Queued before shutdown (the hooks only enqueue): shutdown drains them.
    const first = tracer.startSpan('invoke_agent a', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'user.id': 'alice' } });
    first.end();
    await p.shutdown();
    expect(await metricValue(sc, 'tracewire_spans_seen_total', { source: 'in_process' })).toBe(2);
    await client.until((c) => c.events.length >= 2, 5000, 'the queued run');
    expect(client.events.map((e) => e.type)).toEqual(['agent_started', 'agent_completed']);

    const lifecycle = await metricValue(sc, 'tracewire_lifecycle_spans_total');
    await expect(runDemoAgent(tracer, { user: 'alice' })).resolves.toBeDefined();
    const s = tracer.startSpan('invoke_agent b', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'user.id': 'alice' } });
    expect(() => p.onEnd(s as never)).not.toThrow();
    s.end();
    await p.forceFlush();
    await p.shutdown();
    await settle();
    expect(await metricValue(sc, 'tracewire_spans_seen_total', { source: 'in_process' })).toBe(2);
    expect(await metricValue(sc, 'tracewire_lifecycle_spans_total')).toBe(lifecycle);
    // The first run is judged; no run was opened after shutdown (it would stay in flight).
    await until(() => sc!.tw.ledger.inFlightCount === 0, 5000, 'no run in flight');
    expect(client.events).toHaveLength(2);
  });
});
