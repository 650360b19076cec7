import { BasicTracerProvider } from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runDemoAgent } from '../../src/demo/demoAgent.js';
import { LiveSpanExporter } from '../../src/sources/LiveSpanExporter.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connectAcked, metricValue, startTestSidecar } from '../helpers.js';
import { ensureBuiltDemo, expectDemoRun, runEvents, runExportChild } from './otlpSupport.js';

let sc: Sidecar;
beforeAll(async () => {
  // The child process imports the demo agent from dist/ (`npm test` builds first; this rebuilds only if stale).
  await ensureBuiltDemo();
  sc = await startTestSidecar({}, true);
}, 120_000);
afterAll(async () => {
  await sc?.close();
});

describe('real OTLP exporters in a separate process', () => {
  for (const [exporter, encoding] of [['proto', 'protobuf'], ['http', 'json']] as const) {
    it(`exporter-trace-otlp-${exporter} behind a BatchSpanProcessor delivers the demo run in order`, async () => {
      const user = `bob-${exporter}`;
      const client = await connectAcked(sc, user);
      const before = await metricValue(sc, 'tracewire_otlp_requests_total', { encoding, status: '200' });
      const ids = await runExportChild(exporter, `${sc.otlpUrl}/v1/traces`, user);
      const runId = `${ids.traceId}-${ids.spanId}`;
      const evs = await expectDemoRun(client, runId);
      expect(client.events).toHaveLength(evs.length);
      expect(evs.at(-1)).toMatchObject({ type: 'agent_completed', agent: 'supervisor', conversation_id: `conv-${user}` });
      expect(evs.find((e) => e.type === 'tool_completed' && (e.data as { tool: string }).tool === 'fetch_page')?.data).toMatchObject({ status: 'error', call_id: 'call_2', error: 'tool_error' });
      expect(await metricValue(sc, 'tracewire_otlp_requests_total', { encoding, status: '200' })).toBeGreaterThan(before);
      expect(await metricValue(sc, 'tracewire_spans_seen_total', { source: 'otlp' })).toBeGreaterThanOrEqual(7);
      client.close();
    });
  }
});

describe('LiveSpanExporter', () => {
  it('delivers agent_started while the run is still going, then completes it without duplicates', async () => {
    const user = 'carol-live';
    const client = await connectAcked(sc, user);
    const live = new LiveSpanExporter({ url: `${sc.otlpUrl}/v1/traces`, scheduledDelayMillis: 20 });
    const provider = new BasicTracerProvider({ spanProcessors: [live] });
    let eventsWhileRunning: string[] = [];
    const ids = await runDemoAgent(provider.getTracer('live'), {
      user,
      stepMillis: 5,
      onStarted: async () => {
        // The top-level span has started and nothing below it has: only its start export can do this.
        await client.until((c) => c.events.some((e) => e.type === 'agent_started'), 5000, 'agent_started while the run is running');
        eventsWhileRunning = client.events.map((e) => e.type);
      },
    });
    expect(eventsWhileRunning).toEqual(['agent_started']);
    await live.forceFlush();
    const runId = `${ids.traceId}-${ids.spanId}`;
    const evs = await expectDemoRun(client, runId);
    expect(evs[0]).toMatchObject({ type: 'agent_started', agent: 'supervisor', seq: 1 });
    // Every span went out twice (start and end), and nothing was emitted twice.
    expect(live.exportedRecords).toBe(14);
    expect(live.droppedRecords).toBe(0);
    await new Promise((r) => setTimeout(r, 100));
    expect(runEvents(client, runId)).toHaveLength(11);
    await provider.shutdown();
    await provider.shutdown();
    client.close();
  });

  it('never throws from its hooks and counts drops past its queue bound', async () => {
    const live = new LiveSpanExporter({ url: 'http://127.0.0.1:9/v1/traces', maxQueueSize: 3, scheduledDelayMillis: 10_000, exportTimeoutMillis: 200 });
    const provider = new BasicTracerProvider({ spanProcessors: [live] });
    const tracer = provider.getTracer('bounded');
    // 10 records: the first 3 fill a batch and leave at once, 3 more wait, 4 are dropped.
    for (let i = 0; i < 5; i++) tracer.startSpan(`s${i}`).end();
    expect(live.droppedRecords).toBe(4);
    await live.shutdown();
    // Nothing listens on port 9: both batches fail, quietly.
    expect(live.failedRecords).toBe(6);
    // After shutdown the hooks are no-ops.
    tracer.startSpan('after').end();
    expect(live.droppedRecords).toBe(4);
  });
});
