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

  it('sends one request at a time even when a response takes longer than its export timeout (a span\'s end never overtakes its start)', async () => {
    const http = await import('node:http');
    // In front of the sidecar: the first response trickles for 1.6 s (the exporter's 200-ms timeout is an idle timeout).
    const arrivals: Array<{ n: number; at: number; inFlight: number }> = [];
    let inFlight = 0;
    let n = 0;
    const t0 = Date.now();
    const front = http.createServer((req, res) => {
      const i = ++n;
      inFlight++;
      arrivals.push({ n: i, at: Date.now() - t0, inFlight });
      const body: Buffer[] = [];
      req.on('data', (d: Buffer) => body.push(d));
      req.on('end', () => {
        const forward = (): void => {
          const up = http.request(`${sc.otlpUrl}/v1/traces`, { method: 'POST', headers: { 'content-type': req.headers['content-type']! } }, (r) => {
            r.resume();
            r.on('end', () => {
              inFlight--;
              res.end();
            });
          });
          up.end(Buffer.concat(body));
        };
        if (i > 1) return forward();
        res.writeHead(200, { 'content-type': 'application/x-protobuf' });
        // Bytes every 50 ms (an unknown protobuf field, 15 = 0, which an ExportTraceServiceResponse skips).
        const tick = setInterval(() => res.write(Buffer.from([0x78, 0x00])), 50);
        setTimeout(() => {
          clearInterval(tick);
          forward();
        }, 1600);
      });
    });
    await new Promise<void>((r) => front.listen(0, '127.0.0.1', () => r()));
    const user = 'lev-slow';
    const client = await connectAcked(sc, user);
    const live = new LiveSpanExporter({ url: `http://127.0.0.1:${(front.address() as { port: number }).port}/v1/traces`, scheduledDelayMillis: 10, exportTimeoutMillis: 200 });
    const provider = new BasicTracerProvider({ spanProcessors: [live] });
    try {
      const tracer = provider.getTracer('slow');
      const agent = tracer.startSpan('invoke_agent slowpoke', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'slowpoke', 'user.id': user } });
      await new Promise((r) => setTimeout(r, 100)); // its start is in flight
      agent.end();
      await live.forceFlush();
      await client.until((c) => c.events.length === 2, 5000, 'both events');
      expect(client.events.map((e) => e.type)).toEqual(['agent_started', 'agent_completed']);
      expect(arrivals.map((a) => a.inFlight)).toEqual([1, 1]);
      expect(arrivals[1]!.at).toBeGreaterThanOrEqual(1600);
      expect(live.exportedRecords).toBe(2);
      expect(live.failedRecords).toBe(0);
    } finally {
      await provider.shutdown();
      front.close();
      client.close();
    }
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

describe('a run whose spans come from two tracers (two instrumentation scopes in one request)', () => {
  // Exporters group a request by scope, so the tool library's span follows the agent's end.
  for (const mode of ['batch', 'live'] as const) {
    it(`${mode === 'batch' ? 'exporter-trace-otlp-proto behind a BatchSpanProcessor' : 'LiveSpanExporter'}: every event delivered in causal order, verdict complete`, async () => {
      const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-proto');
      const { BatchSpanProcessor } = await import('@opentelemetry/sdk-trace-base');
      const { context, trace } = await import('@opentelemetry/api');
      const user = `scopes-${mode}`;
      const client = await connectAcked(sc, user);
      const url = `${sc.otlpUrl}/v1/traces`;
      const processor = mode === 'live' ? new LiveSpanExporter({ url, scheduledDelayMillis: 10_000 }) : new BatchSpanProcessor(new OTLPTraceExporter({ url }), { scheduledDelayMillis: 10_000 });
      const provider = new BasicTracerProvider({ spanProcessors: [processor] });
      const agents = provider.getTracer('agent-framework');
      const tools = provider.getTracer('tool-library');
      const top = agents.startSpan('invoke_agent supervisor', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'supervisor', 'user.id': user } });
      const ctx = trace.setSpan(context.active(), top);
      agents.startSpan('chat gpt-4o', { attributes: { 'gen_ai.operation.name': 'chat', 'gen_ai.request.model': 'gpt-4o' } }, ctx).end();
      tools.startSpan('execute_tool search', { attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'search' } }, ctx).end();
      top.end();
      // One request with everything (the scheduled delay is long): grouped by scope, the tool's span comes last.
      await provider.forceFlush();
      const runId = `${top.spanContext().traceId}-${top.spanContext().spanId}`;
      await client.until((c) => c.events.filter((e) => e.run_id === runId).length === 5, 5000, 'five events');
      expect(client.events.filter((e) => e.run_id === runId).map((e) => [e.seq, e.type])).toEqual([
        [1, 'agent_started'],
        [2, 'agent_thinking'],
        [3, 'tool_executing'],
        [4, 'tool_completed'],
        [5, 'agent_completed'],
      ]);
      for (let i = 0; i < 100 && sc.tw.ledger.get(runId)?.judgement === undefined; i++) await new Promise((r) => setTimeout(r, 20));
      expect(sc.tw.ledger.get(runId)?.judgement).toMatchObject({ verdict: 'complete', expected: 5, delivered: 5 });
      await provider.shutdown();
      client.close();
    });
  }
});
