import { context, trace, type Context, type Span } from '@opentelemetry/api';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runDemoAgent } from '../../src/demo/demoAgent.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import type { RunRecord } from '../../src/audit/RunRecord.js';
import type { TracewireOptions } from '../../src/Tracewire.js';
import { connectAcked, metricValue, startTestSidecar, until } from '../helpers.js';
import { expectDemoRun, jsonRequest, jsonSpan, post, postJson, protobufRequest, recordDemo } from './otlpSupport.js';

let sc: Sidecar;
const verdicts: RunRecord[] = [];
beforeAll(async () => {
  sc = await startTestSidecar({ onVerdict: (r) => verdicts.push(r) }, true);
});
afterAll(async () => {
  await sc?.close();
});

describe('spans arriving children first, over several requests', () => {
  it('OTLP/JSON in 3 requests in end order gives the same event sequence', async () => {
    const user = 'dave-json';
    const client = await connectAcked(sc, user);
    const { spans, traceId, spanId } = await recordDemo(user);
    expect(spans).toHaveLength(7);
    // End order: the top-level agent span is last; its children and the sub-agent's come before it.
    expect(spans.at(-1)!.spanContext().spanId).toBe(spanId);
    for (const part of [spans.slice(0, 3), spans.slice(3, 6), spans.slice(6)]) {
      const r = await postJson(sc.otlpUrl!, jsonRequest(part.map((s) => jsonSpan(s))));
      expect(r.status).toBe(200);
      expect(r.json).toEqual({});
    }
    await expectDemoRun(client, `${traceId}-${spanId}`);
    await until(() => verdicts.some((v) => v.runId === `${traceId}-${spanId}`), 5000, 'the verdict');
    expect(verdicts.find((v) => v.runId === `${traceId}-${spanId}`)!.judgement?.verdict).toBe('complete');
    client.close();
  });

  it('protobuf, one span per request, children first, gives the same event sequence', async () => {
    const user = 'dave-proto';
    const client = await connectAcked(sc, user);
    const { spans, traceId, spanId } = await recordDemo(user);
    const held = await metricValue(sc, 'tracewire_held_spans');
    expect(held).toBe(0);
    for (const s of spans) {
      const r = await post(sc.otlpUrl!, protobufRequest([jsonSpan(s)]), { contentType: 'application/x-protobuf' });
      expect(r.status).toBe(200);
      expect(r.headers.get('content-type')).toBe('application/x-protobuf');
      expect(r.body.length).toBe(0);
    }
    await expectDemoRun(client, `${traceId}-${spanId}`);
    expect(sc.tw.otlpBridges.heldCount).toBe(0);
    client.close();
  });

  it('live starts then ended spans (as a partial-span exporter sends them) emit each event once', async () => {
    const user = 'dave-live';
    const client = await connectAcked(sc, user);
    const { spans, traceId, spanId } = await recordDemo(user);
    const top = spans.at(-1)!;
    // The top-level span's start first, then everything ended, children first.
    await postJson(sc.otlpUrl!, jsonRequest([jsonSpan(top, { started: true })]));
    await client.until((c) => c.events.length === 1, 5000, 'agent_started');
    // A start repeated with the ends in one request changes nothing.
    const r = await postJson(sc.otlpUrl!, jsonRequest([jsonSpan(top, { started: true }), ...spans.map((s) => jsonSpan(s))]));
    expect(r.status).toBe(200);
    await expectDemoRun(client, `${traceId}-${spanId}`);
    client.close();
  });
});

describe('a subtree arriving after its run completed (reordered requests)', () => {
  it('is dropped as late_span, without opening a phantom run', async () => {
    const late: RunRecord[] = [];
    const s2 = await startTestSidecar({ orphanHoldMillis: 200, onVerdict: (r) => late.push(r) }, true);
    try {
      const user = 'dave-late';
      const client = await connectAcked(s2, user);
      const { spans, traceId, spanId } = await recordDemo(user);
      const researcher = spans.find((s) => s.name === 'invoke_agent researcher')!.spanContext().spanId;
      const sub = spans.filter((s) => s.spanContext().spanId === researcher || s.parentSpanContext?.spanId === researcher);
      expect(sub).toHaveLength(3);
      // The supervisor's own spans first (its run completes), the researcher's subtree after.
      await postJson(s2.otlpUrl!, jsonRequest(spans.filter((s) => !sub.includes(s)).map((s) => jsonSpan(s))));
      await client.until((c) => c.events.some((e) => e.type === 'agent_completed'), 5000, 'the run to complete');
      await postJson(s2.otlpUrl!, jsonRequest(sub.map((s) => jsonSpan(s))));
      // Past the orphan hold and the verdict grace: a phantom "researcher" run would have been judged by now.
      await new Promise((r) => setTimeout(r, 700));
      expect(late.map((v) => v.runId)).toEqual([`${traceId}-${spanId}`]);
      expect(await metricValue(s2, 'tracewire_events_dropped_total', { reason: 'late_span' })).toBe(5);
      // Before its verdict the run still counts them: the user missed the researcher's five events.
      expect(late[0]!.judgement).toMatchObject({ verdict: 'partial', expected: 11, delivered: 6, reasons: { late_span: 5 }, mainReason: 'late_span' });
      expect(late[0]!.judgement!.explanation).toContain('late_span ×5');
      expect(client.events.map((e) => e.type)).toEqual(['agent_started', 'agent_thinking', 'tool_executing', 'tool_completed', 'agent_thinking', 'agent_completed']);
      expect(s2.tw.otlpBridges.heldCount).toBe(0);
      client.close();
    } finally {
      await s2.close();
    }
  });
});

describe('a subtree arriving after its run was judged (the trace let go of the run)', () => {
  it('is still dropped as late_span, without opening a phantom run', async () => {
    const verdicts: RunRecord[] = [];
    const s2 = await startTestSidecar({ orphanHoldMillis: 200, graceMillis: 20, onVerdict: (r) => verdicts.push(r) }, true);
    try {
      const user = 'erin-late';
      const client = await connectAcked(s2, user);
      const { spans, traceId, spanId } = await recordDemo(user);
      const researcher = spans.find((s) => s.name === 'invoke_agent researcher')!.spanContext().spanId;
      const sub = spans.filter((s) => s.spanContext().spanId === researcher || s.parentSpanContext?.spanId === researcher);
      await postJson(s2.otlpUrl!, jsonRequest(spans.filter((s) => !sub.includes(s)).map((s) => jsonSpan(s))));
      await until(() => verdicts.length === 1, 5000, 'the verdict');
      expect(s2.tw.otlpBridges.traceCount).toBe(1); // kept for late spans, without its judged run
      await postJson(s2.otlpUrl!, jsonRequest(sub.map((s) => jsonSpan(s))));
      await new Promise((r) => setTimeout(r, 500));
      expect(verdicts.map((v) => v.runId)).toEqual([`${traceId}-${spanId}`]);
      expect(s2.tw.otlpBridges.runCount).toBe(0);
      expect(await metricValue(s2, 'tracewire_events_dropped_total', { reason: 'late_span' })).toBe(5);
      expect(client.events.map((e) => e.type)).toEqual(['agent_started', 'agent_thinking', 'tool_executing', 'tool_completed', 'agent_thinking', 'agent_completed']);
      client.close();
    } finally {
      await s2.close();
    }
  });
});

/** A sidecar of its own (short grace), verdicts collected, and a tracer whose finished spans are posted as OTLP/JSON. */
interface Fixture {
  readonly s2: Sidecar;
  readonly verdicts: RunRecord[];
  readonly tracer: ReturnType<BasicTracerProvider['getTracer']>;
  /** Post the spans that finished since the last post (and forget them). */
  postFinished(): Promise<void>;
  /** An HTTP server span (`POST /chat`) with these attributes, and the context of a child of it. */
  requestSpan(attributes: Record<string, string>): { span: Span; parent: Context };
  /** Wait until a metric reaches `value` (the receiver answers before the bridge's last timers ran). */
  untilMetric(name: string, labels: Record<string, string>, value: number): Promise<void>;
}

async function withOwnSidecar(opts: TracewireOptions, body: (f: Fixture) => Promise<void>): Promise<void> {
  const verdicts: RunRecord[] = [];
  const s2 = await startTestSidecar({ graceMillis: 20, ...opts, onVerdict: (r) => verdicts.push(r) }, true);
  const mem = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(mem)] });
  const tracer = provider.getTracer('otlp-ordering');
  try {
    await body({
      s2,
      verdicts,
      tracer,
      requestSpan: (attributes) => {
        const span = tracer.startSpan('POST /chat', { kind: 1, attributes });
        return { span, parent: trace.setSpan(context.active(), span) };
      },
      postFinished: async () => {
        const spans = mem.getFinishedSpans().slice();
        mem.reset();
        await postJson(s2.otlpUrl!, jsonRequest(spans.map((x) => jsonSpan(x))));
      },
      untilMetric: async (name, labels, value) => {
        for (let i = 0; i < 100 && (await metricValue(s2, name, labels)) < value; i++) await new Promise((r) => setTimeout(r, 20));
      },
    });
  } finally {
    await provider.shutdown();
    await s2.close();
  }
}

describe('a trace kept after its runs were judged (its done spans kept as ids only)', () => {
  it('still counts the late end of a span that had not ended when its run was judged', async () => {
    await withOwnSidecar({}, async ({ s2, verdicts, tracer, untilMetric }) => {
      const user = 'fay-late-end';
      const client = await connectAcked(s2, user);
      const agent = tracer.startSpan('invoke_agent supervisor', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'supervisor', 'user.id': user } });
      const tool = tracer.startSpan('execute_tool search', { attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'search' } }, trace.setSpan(context.active(), agent));
      const post = (spans: Array<Record<string, unknown>>): Promise<unknown> => postJson(s2.otlpUrl!, jsonRequest(spans));
      const agentSpan = agent as unknown as ReadableSpan;
      const toolSpan = tool as unknown as ReadableSpan;
      // A partial-span exporter sends both starts; the agent ends (and is judged) before the tool ends.
      await post([jsonSpan(agentSpan, { started: true }), jsonSpan(toolSpan, { started: true })]);
      agent.end();
      await post([jsonSpan(agentSpan)]);
      await until(() => verdicts.length === 1, 5000, 'the verdict');
      expect(client.events.map((e) => e.type)).toEqual(['agent_started', 'tool_executing', 'agent_completed']);
      tool.end();
      await post([jsonSpan(toolSpan)]);
      await untilMetric('tracewire_events_dropped_total', { reason: 'late_span', type: 'tool_completed' }, 1);
      expect(await metricValue(s2, 'tracewire_events_dropped_total', { reason: 'late_span', type: 'tool_completed' })).toBe(1);
      // Its own end again (a retried export) counts nothing more, and the agent's late duplicate neither.
      await post([jsonSpan(toolSpan), jsonSpan(agentSpan)]);
      await new Promise((r) => setTimeout(r, 100));
      expect(await metricValue(s2, 'tracewire_events_dropped_total', { reason: 'late_span' })).toBe(1);
      expect(s2.tw.otlpBridges.runCount).toBe(0);
      expect(verdicts).toHaveLength(1);
      client.close();
    });
  });

  it('opens a later run below a span outside every run, which passes on its user', async () => {
    await withOwnSidecar({}, async ({ s2, verdicts, tracer, postFinished, requestSpan }) => {
      const user = 'fay-second-run';
      const client = await connectAcked(s2, user);
      // An HTTP server span carrying the user, and two runs under it exported in two batches.
      const { span: server, parent } = requestSpan({ 'user.id': user });
      const first = await runDemoAgent(tracer, { user, userOnSpan: false, parent });
      server.end();
      await postFinished();
      await expectDemoRun(client, `${first.traceId}-${first.spanId}`);
      await until(() => verdicts.length === 1, 5000, 'the first verdict');
      const second = await runDemoAgent(tracer, { user, userOnSpan: false, parent });
      expect(second.traceId).toBe(first.traceId);
      await postFinished();
      // The second run finds the server span (kept whole: it is outside every run) and its user.
      await expectDemoRun(client, `${second.traceId}-${second.spanId}`);
      await until(() => verdicts.length === 2, 5000, 'the second verdict');
      expect(verdicts.map((v) => v.judgement?.verdict)).toEqual(['complete', 'complete']);
      expect(await metricValue(s2, 'tracewire_events_dropped_total', { reason: 'late_span' })).toBe(0);
      client.close();
    });
  });
});

describe('a long trace with many judged runs (past the ids kept in one string)', () => {
  it('still drops a late span below its first run as late, and opens a new run below the server span', async () => {
    await withOwnSidecar({ orphanHoldMillis: 200 }, async ({ s2, verdicts, tracer, postFinished, untilMetric }) => {
      const user = 'gus-long';
      const client = await connectAcked(s2, user);
      // A session's server span and 12 runs of 7 spans below it in one trace, each run judged before
      // the next arrives (84 done spans). The server span ends after the first run, and is sent with it.
      const server = tracer.startSpan('POST /session', { kind: 1, attributes: { 'user.id': user } });
      const parent = trace.setSpan(context.active(), server);
      const runs: Array<{ traceId: string; spanId: string }> = [];
      for (let i = 0; i < 12; i++) {
        const ids = await runDemoAgent(tracer, { user, userOnSpan: false, parent });
        if (i === 0) server.end();
        runs.push(ids);
        await postFinished();
        await until(() => verdicts.length === i + 1, 5000, `verdict ${i + 1}`);
      }
      expect(verdicts.every((v) => v.judgement?.verdict === 'complete')).toBe(true);
      // A tool span below the first run's agent, arriving now: late.
      const first = runs[0]!;
      const below = trace.setSpanContext(context.active(), { traceId: first.traceId, spanId: first.spanId, traceFlags: 1 });
      tracer.startSpan('execute_tool late', { attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'late' } }, below).end();
      await postFinished();
      await untilMetric('tracewire_events_dropped_total', { reason: 'late_span' }, 2);
      expect(await metricValue(s2, 'tracewire_events_dropped_total', { reason: 'late_span' })).toBe(2); // tool_executing and tool_completed
      expect(s2.tw.otlpBridges.heldCount).toBe(0);
      // One more run below the server span is delivered with the server span's user.
      const last = await runDemoAgent(tracer, { user, userOnSpan: false, parent });
      await postFinished();
      await expectDemoRun(client, `${last.traceId}-${last.spanId}`);
      expect(last.traceId).toBe(first.traceId);
      client.close();
    });
  });
});

describe('a request span that ended and was exported before the run it started (202 Accepted, agent in the background)', () => {
  it('passes its user on: the run is delivered at once, not after the orphan hold', async () => {
    // The default orphan hold (10 s): waiting for it would fail the 5 s wait below.
    await withOwnSidecar({}, async ({ s2, verdicts, tracer, postFinished, requestSpan }) => {
      const user = 'hal-background';
      const client = await connectAcked(s2, user);
      const { span: request, parent } = requestSpan({ 'user.id': user, 'gen_ai.conversation.id': 'conv-bg' });
      request.end();
      // The request's span goes out first, alone: a trace with no run yet.
      await postFinished();
      expect(s2.tw.otlpBridges.traceCount).toBe(0);
      // The agent runs in the background below it; no user on its own spans.
      const ids = await runDemoAgent(tracer, { user, userOnSpan: false, parent, conversation: 'conv-bg' });
      const t0 = Date.now();
      await postFinished();
      const frames = await expectDemoRun(client, `${ids.traceId}-${ids.spanId}`);
      expect(Date.now() - t0).toBeLessThan(5000);
      expect(frames.every((f) => f.conversation_id === 'conv-bg')).toBe(true);
      await until(() => verdicts.length === 1, 5000, 'the verdict');
      expect(verdicts[0]!.judgement?.verdict).toBe('complete');
      expect(verdicts[0]!.user).toBe(user);
      expect(s2.tw.otlpBridges.heldCount).toBe(0);
      expect(await metricValue(s2, 'tracewire_events_dropped_total')).toBe(0);
      client.close();
    });
  });
});

describe('a request span exported after more spans than a released trace leaves (children first)', () => {
  it('is still remembered, so a background run below it gets its user at once', async () => {
    await withOwnSidecar({}, async ({ s2, verdicts, tracer, postFinished, requestSpan }) => {
      const user = 'ivy-many-queries';
      const client = await connectAcked(s2, user);
      const { span: request, parent } = requestSpan({ 'user.id': user });
      // 100 database spans under the request end before it: they are exported first, the request span last.
      for (let i = 0; i < 100; i++) tracer.startSpan(`SELECT ${i}`, { attributes: { 'db.system': 'postgresql' } }, parent).end();
      request.end();
      await postFinished();
      expect(s2.tw.otlpBridges.traceCount).toBe(0);
      const ids = await runDemoAgent(tracer, { user, userOnSpan: false, parent });
      const t0 = Date.now();
      await postFinished();
      await expectDemoRun(client, `${ids.traceId}-${ids.spanId}`);
      expect(Date.now() - t0).toBeLessThan(5000);
      await until(() => verdicts.length === 1, 5000, 'the verdict');
      expect(verdicts[0]!.judgement?.verdict).toBe('complete');
      expect(s2.tw.otlpBridges.heldCount).toBe(0);
      client.close();
    });
  });
});

describe('a run below a non-agent root span (an HTTP server span)', () => {
  it('is held until the root arrives, then delivered in order', async () => {
    const user = 'dave-http';
    const client = await connectAcked(sc, user);
    const mem = new InMemorySpanExporter();
    const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(mem)] });
    const tracer = provider.getTracer('http');
    const server = tracer.startSpan('POST /chat', { kind: 1 });
    const ids = await runDemoAgent(tracer, { user, parent: trace.setSpan(context.active(), server) });
    server.end();
    const spans = mem.getFinishedSpans().slice();
    expect(spans).toHaveLength(8);
    await postJson(sc.otlpUrl!, jsonRequest(spans.slice(0, 7).map((s) => jsonSpan(s))));
    await new Promise((r) => setTimeout(r, 50));
    expect(client.events).toHaveLength(0);
    expect(sc.tw.otlpBridges.heldCount).toBeGreaterThan(0);
    await postJson(sc.otlpUrl!, jsonRequest([jsonSpan(spans[7]!)]));
    await expectDemoRun(client, `${ids.traceId}-${ids.spanId}`);
    expect(sc.tw.otlpBridges.heldCount).toBe(0);
    await provider.shutdown();
    client.close();
  });
});

describe('audit mode: agent.event span events over OTLP', () => {
  const auditVerdicts: RunRecord[] = [];
  let audit: Sidecar;
  beforeAll(async () => {
    audit = await startTestSidecar({ mode: 'audit', onVerdict: (r) => auditVerdicts.push(r) }, true);
  });
  afterAll(async () => {
    await audit?.close();
  });

  const recorded = (dropFetchCompleted: boolean) => (s: { name: string }) => {
    if (s.name.startsWith('invoke_agent')) return [{ type: 'agent_started', outcome: 'delivered' }, { type: 'agent_completed', outcome: 'delivered' }];
    if (s.name.startsWith('chat')) return [{ type: 'agent_thinking', outcome: 'delivered' }];
    if (s.name === 'execute_tool fetch_page' && dropFetchCompleted) return [{ type: 'tool_executing', outcome: 'delivered' }, { type: 'tool_completed', outcome: 'dropped', reason: 'send_failed' }];
    return [{ type: 'tool_executing', outcome: 'delivered' }, { type: 'tool_completed', outcome: 'delivered' }];
  };

  async function judge(user: string, audited: ((s: { name: string }) => Array<{ type: string; outcome: string; reason?: string }>) | undefined): Promise<RunRecord> {
    const { spans, traceId, spanId } = await recordDemo(user);
    const r = await postJson(audit.otlpUrl!, jsonRequest(spans.map((s) => jsonSpan(s, { audit: audited }))));
    expect(r.status).toBe(200);
    const runId = `${traceId}-${spanId}`;
    await until(() => auditVerdicts.some((v) => v.runId === runId), 5000, 'the verdict');
    return auditVerdicts.find((v) => v.runId === runId)!;
  }

  it('a backend that recorded every delivery gets complete', async () => {
    expect((await judge('frank', recorded(false))).judgement?.verdict).toBe('complete');
  });

  it('a recorded drop makes the run partial, with its reason', async () => {
    const j = (await judge('frank', recorded(true))).judgement!;
    expect(j.verdict).toBe('partial');
    expect(j.mainReason).toBe('send_failed');
  });

  it('no agent.event at all is missing_events', async () => {
    expect((await judge('frank', undefined)).judgement?.verdict).toBe('missing_events');
  });
});

describe('a run whose top-level agent waits for a parent that never arrives (another service, no remote flag)', () => {
  it('past --orphan-hold-ms the whole waiting subtree is anchored from its top: every event delivered, verdict complete', async () => {
    await withOwnSidecar({ orphanHoldMillis: 150 }, async ({ s2, verdicts, tracer, postFinished }) => {
      const user = 'gus-orphans';
      const client = await connectAcked(s2, user);
      // The gateway's span is never exported; everything below it is, children first.
      const gateway = tracer.startSpan('POST /chat');
      const agent = tracer.startSpan('invoke_agent supervisor', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'supervisor', 'user.id': user } }, trace.setSpan(context.active(), gateway));
      const inAgent = trace.setSpan(context.active(), agent);
      tracer.startSpan('chat gpt-4o', { attributes: { 'gen_ai.operation.name': 'chat', 'gen_ai.request.model': 'gpt-4o' } }, inAgent).end();
      tracer.startSpan('execute_tool fetch', { attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'fetch' } }, inAgent).end();
      agent.end();
      await postFinished();
      await until(() => verdicts.length === 1, 5000, 'the verdict');
      expect(client.events.map((e) => [e.seq, e.type])).toEqual([
        [1, 'agent_started'],
        [2, 'agent_thinking'],
        [3, 'tool_executing'],
        [4, 'tool_completed'],
        [5, 'agent_completed'],
      ]);
      expect(verdicts[0]!.judgement).toMatchObject({ verdict: 'complete', expected: 5, delivered: 5 });
      expect(s2.tw.otlpBridges.heldCount).toBe(0);
      gateway.end();
      client.close();
    });
  });
});

/** The events of a supervisor run whose researcher sub-agent (in another service) calls one tool. */
const SUB_AGENT_RUN = [
  [1, 'agent_started', 'supervisor'],
  [2, 'agent_started', 'researcher'],
  [3, 'tool_executing', 'researcher'],
  [4, 'tool_completed', 'researcher'],
  [5, 'agent_completed', 'researcher'],
  [6, 'agent_completed', 'supervisor'],
];

describe('a sub-agent in another service (its parent span is remote)', () => {
  it('stays in its caller\'s run when the caller\'s span has arrived already, inheriting its user', async () => {
    await withOwnSidecar({}, async ({ s2, verdicts, tracer, postFinished }) => {
      const user = 'hal-remote';
      const client = await connectAcked(s2, user);
      const post = (spans: Array<Record<string, unknown>>): Promise<unknown> => postJson(s2.otlpUrl!, jsonRequest(spans));
      // Service A: the supervisor and its HTTP client span, exported live (starts).
      const supervisor = tracer.startSpan('invoke_agent supervisor', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'supervisor', 'user.id': user } });
      const call = tracer.startSpan('POST /research', { kind: 2 }, trace.setSpan(context.active(), supervisor));
      await post([jsonSpan(supervisor as unknown as ReadableSpan, { started: true }), jsonSpan(call as unknown as ReadableSpan, { started: true })]);
      // Service B: the researcher agent, its parent the propagated (remote) context of A's call.
      const remote = trace.setSpanContext(context.active(), { ...call.spanContext(), isRemote: true });
      const researcher = tracer.startSpan('invoke_agent researcher', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'researcher' } }, remote);
      tracer.startSpan('execute_tool fetch', { attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'fetch' } }, trace.setSpan(context.active(), researcher)).end();
      researcher.end();
      await postFinished();
      call.end();
      supervisor.end();
      await postFinished();
      await until(() => verdicts.length === 1, 5000, 'the verdict');
      expect(client.events.map((e) => [e.seq, e.type, e.agent])).toEqual(SUB_AGENT_RUN);
      expect(client.events[1]!.data).toMatchObject({ agent: 'researcher', parent_agent: 'supervisor' });
      expect(verdicts[0]!.judgement).toMatchObject({ verdict: 'complete', expected: 6, delivered: 6 });
      expect(await metricValue(s2, 'tracewire_events_dropped_total', { reason: 'no_user' })).toBe(0);
      client.close();
    });
  });
});

describe('spans arriving after their trace was dropped as idle (its runs judged)', () => {
  it('a background run below the request span still gets the user; a late span below a judged run is still late', async () => {
    await withOwnSidecar({ orphanHoldMillis: 200 }, async ({ s2, verdicts, tracer, postFinished, requestSpan, untilMetric }) => {
      const user = 'ida-idle';
      const client = await connectAcked(s2, user);
      // The request: a quick router agent, then the answer (202); the background agent starts much later.
      const { span: request, parent } = requestSpan({ 'user.id': user });
      const router = tracer.startSpan('invoke_agent router', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'router' } }, parent);
      router.end();
      request.end();
      await postFinished();
      await until(() => verdicts.length === 1, 5000, 'the router run');
      // Dropped as idle (between one and two idle times of 1 s after its last span).
      await until(() => s2.tw.otlpBridges.traceCount === 0, 5000, 'the trace to be dropped as idle');
      const worker = tracer.startSpan('invoke_agent worker', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'worker' } }, parent);
      tracer.startSpan('execute_tool fetch', { attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'fetch' } }, trace.setSpan(context.active(), worker)).end();
      worker.end();
      // And a sub-agent of the judged router run that ended late.
      tracer.startSpan('invoke_agent helper', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'helper' } }, trace.setSpan(context.active(), router)).end();
      await postFinished();
      await until(() => verdicts.length === 2, 5000, 'the worker run');
      const workerRun = `${worker.spanContext().traceId}-${worker.spanContext().spanId}`;
      expect(verdicts[1]!.runId).toBe(workerRun);
      expect(verdicts[1]!.judgement).toMatchObject({ verdict: 'complete', expected: 4, delivered: 4 });
      expect(client.events.filter((e) => e.run_id === workerRun).map((e) => e.type)).toEqual(['agent_started', 'tool_executing', 'tool_completed', 'agent_completed']);
      await untilMetric('tracewire_events_dropped_total', { reason: 'late_span' }, 2);
      expect(await metricValue(s2, 'tracewire_events_dropped_total', { reason: 'late_span' })).toBe(2);
      // No phantom "helper" run, and nothing waits for a verdict.
      await new Promise((r) => setTimeout(r, 300));
      expect(verdicts).toHaveLength(2);
      expect(await metricValue(s2, 'tracewire_events_dropped_total', { reason: 'no_user' })).toBe(0);
      client.close();
    });
  }, 15_000);
});

describe('two services\' spans in one request (a Collector grouping them), the callee\'s first', () => {
  it('the callee\'s sub-agent waits for the request\'s end and joins its caller\'s run, with parent_agent across the services', async () => {
    await withOwnSidecar({}, async ({ s2, verdicts, tracer }) => {
      const user = 'ivy-remote';
      const client = await connectAcked(s2, user);
      const mem = new InMemorySpanExporter();
      const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(mem)] });
      const b = provider.getTracer('service-b');
      // Service A (tracer): the supervisor and its HTTP client span.
      const supervisor = tracer.startSpan('invoke_agent supervisor', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'supervisor', 'user.id': user } });
      const call = tracer.startSpan('POST /research', { kind: 2 }, trace.setSpan(context.active(), supervisor));
      // Service B: its server span below A's call (remote), the researcher below it, a tool.
      const server = b.startSpan('POST /research', { kind: 1 }, trace.setSpanContext(context.active(), { ...call.spanContext(), isRemote: true }));
      const researcher = b.startSpan('invoke_agent researcher', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'researcher' } }, trace.setSpan(context.active(), server));
      b.startSpan('execute_tool fetch', { attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'fetch' } }, trace.setSpan(context.active(), researcher)).end();
      researcher.end();
      server.end();
      call.end();
      supervisor.end();
      const aSpans = [call, supervisor] as unknown as ReadableSpan[];
      // One request, service B's spans first (grouped by resource), each service's in end order.
      await postJson(s2.otlpUrl!, jsonRequest([...mem.getFinishedSpans(), ...aSpans].map((x) => jsonSpan(x))));
      await until(() => verdicts.length === 1, 5000, 'the verdict');
      expect(client.events.map((e) => [e.seq, e.type, e.agent])).toEqual(SUB_AGENT_RUN);
      expect(client.events[1]!.data).toMatchObject({ agent: 'researcher', parent_agent: 'supervisor' });
      expect(verdicts[0]!.judgement).toMatchObject({ verdict: 'complete', expected: 6, delivered: 6 });
      await provider.shutdown();
      client.close();
    });
  });

  it('a callee span that has its own user does not wait: its run starts at once when the caller is not in the request', async () => {
    await withOwnSidecar({}, async ({ s2, verdicts, tracer, postFinished }) => {
      const user = 'ivy-own';
      const client = await connectAcked(s2, user);
      const remote = trace.setSpanContext(context.active(), { traceId: '5bf92f3577b34da6a3ce929d0e0e4736', spanId: '10f067aa0ba902b7', traceFlags: 1, isRemote: true });
      const agent = tracer.startSpan('invoke_agent helper', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'helper', 'user.id': user } }, remote);
      agent.end();
      await postFinished();
      await until(() => verdicts.length === 1, 5000, 'the verdict');
      expect(client.events.map((e) => e.type)).toEqual(['agent_started', 'agent_completed']);
      expect(verdicts[0]!.judgement).toMatchObject({ verdict: 'complete' });
      client.close();
    });
  });
});
