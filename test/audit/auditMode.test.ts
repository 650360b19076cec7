import { context, trace, type Context, type Span, type Tracer } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { BasicTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { afterEach, describe, expect, it } from 'vitest';
import type { EventType } from '../../src/audit/Metrics.js';
import { EV_DELIVERED } from '../../src/audit/RunRecord.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connectAcked, inProcessTracer, metricValue, startTestSidecar, until } from '../helpers.js';
import { getJson, judged, runIdOf } from './support.js';

let sc: Sidecar | undefined;
afterEach(async () => {
  await sc?.close();
  sc = undefined;
});

type Outcome = { outcome: 'delivered' | 'dropped'; reason?: string } | undefined;
/** Decides what the backend's own notifier did with each event (undefined: it recorded nothing). */
type Policy = (type: EventType, nth: number) => Outcome;

/**
 * A chat backend that delivers its own events over its own WebSocket code and
 * is instrumented with the plain OpenTelemetry API only: each delivery is
 * recorded as an `agent.event` span event on the lifecycle span that caused
 * it, except `tool_completed`, which its notifier records on a child
 * `ws.send` span (a descendant, not a lifecycle span).
 */
class InstrumentedBackend {
  private readonly counts = new Map<EventType, number>();
  constructor(
    private readonly tracer: Tracer,
    private readonly policy: Policy,
  ) {}

  private notify(span: Span, type: EventType): void {
    const n = (this.counts.get(type) ?? 0) + 1;
    this.counts.set(type, n);
    const o = this.policy(type, n);
    if (o === undefined) return; // the emitter was never wired at this call site
    const attrs: Record<string, string> = { 'agent.event.type': type, 'agent.event.outcome': o.outcome };
    if (o.reason !== undefined) attrs['agent.event.reason'] = o.reason;
    span.addEvent('agent.event', attrs);
  }

  private child(parent: Context, name: string, attributes: Record<string, string>): { span: Span; ctx: Context } {
    const span = this.tracer.startSpan(name, { attributes }, parent);
    return { span, ctx: trace.setSpan(parent, span) };
  }

  /** One run: supervisor → chat → execute_tool (tool_completed recorded on a ws.send child span). */
  run(user: string): { traceId: string; spanId: string } {
    const top = this.child(context.active(), 'invoke_agent supervisor', { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'supervisor', 'user.id': user });
    this.notify(top.span, 'agent_started');
    const chat = this.child(top.ctx, 'chat gpt-4o', { 'gen_ai.operation.name': 'chat', 'gen_ai.request.model': 'gpt-4o' });
    this.notify(chat.span, 'agent_thinking');
    chat.span.end();
    const tool = this.child(top.ctx, 'execute_tool search_docs', { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'search_docs', 'gen_ai.tool.call.id': 'call_1' });
    this.notify(tool.span, 'tool_executing');
    const send = this.child(tool.ctx, 'ws.send', { 'messaging.system': 'websocket' });
    this.notify(send.span, 'tool_completed');
    send.span.end();
    tool.span.end();
    this.notify(top.span, 'agent_completed');
    top.span.end();
    return { traceId: top.span.spanContext().traceId, spanId: top.span.spanContext().spanId };
  }
}

const FIVE = { agent_started: 1, agent_thinking: 1, tool_executing: 1, tool_completed: 1, agent_completed: 1 };

describe('audit mode', () => {
  it('judges a backend that records every event delivered as complete, and emits nothing itself', async () => {
    sc = await startTestSidecar({ mode: 'audit' });
    expect(sc.tw.config.mode).toBe('audit');
    const { tracer } = inProcessTracer(sc);
    const client = await connectAcked(sc, 'ann');
    const runId = runIdOf(new InstrumentedBackend(tracer, () => ({ outcome: 'delivered' })).run('ann'));
    const rec = await judged(sc, runId);
    expect(rec.judgement).toMatchObject({ verdict: 'complete', mainReason: 'none', expected: 5, delivered: 5, reasons: {}, undeliveredByType: {} });
    expect(rec.auditOutcomes).toBe(5);
    expect(rec.judgement!.explanation).toBe('All 5 expected events were delivered to user ann.');
    // tool_completed was recorded on the ws.send child span and still matched its tool span's event.
    const toolCompleted = rec.events.find((e) => e.type === 'tool_completed')!;
    expect(rec.spans.find((s) => s.spanId === toolCompleted.spanId)?.kind).toBe('tool');
    expect(toolCompleted).toMatchObject({ state: 1, connections: 1 });
    for (const [type, n] of Object.entries(FIVE)) {
      expect(await metricValue(sc, 'tracewire_events_emitted_total', { type })).toBe(n);
      expect(await metricValue(sc, 'tracewire_events_delivered_total', { type })).toBe(n);
    }
    expect(await metricValue(sc, 'tracewire_runs_total', { verdict: 'complete' })).toBe(1);
    expect(await metricValue(sc, 'tracewire_events_dropped_total')).toBe(0);
    // In audit mode the sidecar judges only: the backend's client gets nothing from tracewire.
    await new Promise((r) => setTimeout(r, 50));
    expect(client.events).toEqual([]);
  });

  it('judges a backend that records no agent.event at all as missing_events / not_recorded: the emitter is not wired', async () => {
    sc = await startTestSidecar({ mode: 'audit' });
    const { tracer } = inProcessTracer(sc);
    const runId = runIdOf(new InstrumentedBackend(tracer, () => undefined).run('bob'));
    const rec = await judged(sc, runId);
    expect(rec.judgement).toMatchObject({
      verdict: 'missing_events',
      mainReason: 'not_recorded',
      expected: 5,
      delivered: 0,
      reasons: { not_recorded: 5 },
      undeliveredByType: FIVE,
    });
    expect(rec.judgement!.explanation).toBe(
      'Agents ran (5 events expected) but the backend recorded no agent.event span event at all: its event emitter is not wired (not_recorded ×5).',
    );
    expect(rec.judgement!.explanation).toContain('not wired');
    expect(await metricValue(sc, 'tracewire_runs_total', { verdict: 'missing_events', reason: 'not_recorded' })).toBe(1);
    expect(await metricValue(sc, 'tracewire_events_dropped_total', { reason: 'not_recorded' })).toBe(5);
    const { body } = await getJson(sc, '/api/runs?verdict=missing_events');
    expect(body.runs.map((r: { run_id: string }) => r.run_id)).toEqual([runId]);
    expect(body.runs[0].explanation).toContain('not wired');
  });

  it('judges a backend that records some events dropped for backpressure as partial, with those reasons', async () => {
    sc = await startTestSidecar({ mode: 'audit' });
    const { tracer } = inProcessTracer(sc);
    const policy: Policy = (type) =>
      type === 'tool_executing' || type === 'tool_completed' ? { outcome: 'dropped', reason: 'backpressure' } : { outcome: 'delivered' };
    const runId = runIdOf(new InstrumentedBackend(tracer, policy).run('cyd'));
    const rec = await judged(sc, runId);
    expect(rec.judgement).toMatchObject({
      verdict: 'partial',
      mainReason: 'backpressure',
      expected: 5,
      delivered: 3,
      reasons: { backpressure: 2 },
      undeliveredByType: { tool_executing: 1, tool_completed: 1 },
    });
    expect(rec.judgement!.explanation).toBe('2 of 5 expected events did not reach user cyd: tool_executing ×1, tool_completed ×1 (backpressure ×2).');
    expect(await metricValue(sc, 'tracewire_events_dropped_total', { reason: 'backpressure' })).toBe(2);
    expect(await metricValue(sc, 'tracewire_events_delivered_total')).toBe(3);
    expect(await metricValue(sc, 'tracewire_runs_total', { verdict: 'partial', reason: 'backpressure' })).toBe(1);

    const { body } = await getJson(sc, `/api/runs/${runId}`);
    expect(body.events.map((e: { type: string; outcome: string; reason: string | null }) => [e.type, e.outcome, e.reason])).toEqual([
      ['agent_started', 'delivered', null],
      ['agent_thinking', 'delivered', null],
      ['tool_executing', 'dropped', 'backpressure'],
      ['tool_completed', 'dropped', 'backpressure'],
      ['agent_completed', 'delivered', null],
    ]);
  });

  it('counts events the backend recorded as dropped without a known reason as reported_dropped, and unrecorded ones as not_recorded', async () => {
    sc = await startTestSidecar({ mode: 'audit' });
    const { tracer } = inProcessTracer(sc);
    const policy: Policy = (type) =>
      type === 'agent_thinking' ? { outcome: 'dropped', reason: 'socket went away' } : type === 'agent_completed' ? undefined : { outcome: 'delivered' };
    const runId = runIdOf(new InstrumentedBackend(tracer, policy).run('dan'));
    const rec = await judged(sc, runId);
    expect(rec.judgement).toMatchObject({
      verdict: 'partial',
      expected: 5,
      delivered: 3,
      reasons: { reported_dropped: 1, not_recorded: 1 },
      undeliveredByType: { agent_thinking: 1, agent_completed: 1 },
    });
  });

  it('counts one outcome per connection for the same event: a second tab does not cover for a sub-agent whose notifier is not wired (OTLP)', async () => {
    sc = await startTestSidecar({ mode: 'audit' }, true);
    // A backend in another language would export like this: each span on its own request when it ends (children first).
    const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(new OTLPTraceExporter({ url: `${sc.otlpUrl}/v1/traces` }))] });
    const tracer = provider.getTracer('backend');
    const tabs = 2;
    const delivered = (span: Span, type: EventType): void => {
      for (let c = 0; c < tabs; c++) span.addEvent('agent.event', { 'agent.event.type': type, 'agent.event.outcome': 'delivered' });
    };
    const top = tracer.startSpan('invoke_agent supervisor', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'supervisor', 'user.id': 'ann' } });
    delivered(top, 'agent_started');
    // The sub-agent's notifier was never wired: it records nothing.
    const sub = tracer.startSpan('invoke_agent researcher', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'researcher' } }, trace.setSpan(context.active(), top));
    sub.end();
    delivered(top, 'agent_completed');
    top.end();
    await provider.forceFlush();
    await provider.shutdown();

    const runId = runIdOf(top.spanContext());
    const rec = await judged(sc, runId);
    expect(rec.judgement).toMatchObject({
      verdict: 'partial',
      mainReason: 'not_recorded',
      expected: 4,
      delivered: 2,
      reasons: { not_recorded: 2 },
      undeliveredByType: { agent_started: 1, agent_completed: 1 },
    });
    expect(rec.auditOutcomes).toBe(4);
    expect(rec.judgement!.explanation).toBe('2 of 4 expected events did not reach user ann: agent_started ×1, agent_completed ×1 (not_recorded ×2).');
    expect(await metricValue(sc, 'tracewire_events_delivered_total')).toBe(2);
    expect(await metricValue(sc, 'tracewire_events_dropped_total', { reason: 'not_recorded' })).toBe(2);
    expect(await metricValue(sc, 'tracewire_runs_total', { verdict: 'partial', reason: 'not_recorded' })).toBe(1);

    const { body } = await getJson(sc, `/api/runs/${runId}`);
    const nameOf = new Map(body.spans.map((x: { span_id: string; name: string }) => [x.span_id, x.name]));
    expect(body.events.map((e: { type: string; span_id: string; outcome: string; reason: string | null; connections: number }) => [e.type, nameOf.get(e.span_id), e.outcome, e.reason, e.connections])).toEqual([
      ['agent_started', 'supervisor', 'delivered', null, 2],
      ['agent_started', 'researcher', 'dropped', 'not_recorded', 0],
      ['agent_completed', 'researcher', 'dropped', 'not_recorded', 0],
      ['agent_completed', 'supervisor', 'delivered', null, 2],
    ]);
  });

  it('counts an event delivered when one connection got it and another failed, in either order, as emit mode does', async () => {
    sc = await startTestSidecar({ mode: 'audit' });
    const { tracer } = inProcessTracer(sc);
    const record = (span: Span, type: EventType, outcome: 'delivered' | 'dropped', reason?: string): void => {
      span.addEvent('agent.event', { 'agent.event.type': type, 'agent.event.outcome': outcome, ...(reason !== undefined ? { 'agent.event.reason': reason } : {}) });
    };
    const top = tracer.startSpan('invoke_agent solo', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'solo', 'user.id': 'bob' } });
    record(top, 'agent_started', 'dropped', 'send_failed'); // one tab failed …
    record(top, 'agent_started', 'delivered'); // … the other got it
    const chat = tracer.startSpan('chat gpt-4o', { attributes: { 'gen_ai.operation.name': 'chat', 'gen_ai.request.model': 'gpt-4o' } }, trace.setSpan(context.active(), top));
    // Both tabs failed, for different reasons: the one that names the failure best is kept, once.
    record(chat, 'agent_thinking', 'dropped', 'send_failed');
    record(chat, 'agent_thinking', 'dropped', 'backpressure');
    chat.end();
    record(top, 'agent_completed', 'delivered');
    record(top, 'agent_completed', 'dropped', 'send_failed');
    top.end();

    const rec = await judged(sc, runIdOf(top.spanContext()));
    expect(rec.judgement).toMatchObject({
      verdict: 'partial',
      mainReason: 'backpressure',
      expected: 3,
      delivered: 2,
      reasons: { backpressure: 1 },
      undeliveredByType: { agent_thinking: 1 },
    });
    expect(rec.judgement!.explanation).toBe('1 of 3 expected events did not reach user bob: agent_thinking ×1 (backpressure ×1).');
    // Each event counted once: delivered or dropped, never both.
    expect(await metricValue(sc, 'tracewire_events_delivered_total')).toBe(2);
    expect(await metricValue(sc, 'tracewire_events_dropped_total')).toBe(1);
    expect(await metricValue(sc, 'tracewire_events_dropped_total', { type: 'agent_thinking', reason: 'backpressure' })).toBe(1);
  });

  it('keeps the deliveries a backend recorded for a run evicted by the in-flight run limit, as emit mode does', async () => {
    const judgeEvicted = async (mode: 'emit' | 'audit') => {
      sc = await startTestSidecar({ mode, maxInFlightRuns: 1 });
      const { tracer } = inProcessTracer(sc);
      const client = await connectAcked(sc, 'ann');
      const record = (span: Span, type: EventType): void => {
        if (mode === 'audit') span.addEvent('agent.event', { 'agent.event.type': type, 'agent.event.outcome': 'delivered' });
      };
      const top = tracer.startSpan('invoke_agent a', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'a', 'user.id': 'ann' } });
      record(top, 'agent_started');
      const tool = tracer.startSpan('execute_tool t', { attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 't' } }, trace.setSpan(context.active(), top));
      record(tool, 'tool_executing');
      record(tool, 'tool_completed');
      tool.end();
      const runId = runIdOf(top.spanContext());
      // Emit mode: the sidecar's own writes completed before the eviction.
      if (mode === 'emit') await until(() => sc!.tw.ledger.get(runId)?.events.filter((e) => e.state === EV_DELIVERED).length === 3, 5000, 'three deliveries');
      // A second run past --max-runs 1 evicts the first while its top-level span is still open.
      const next = tracer.startSpan('invoke_agent b', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'b', 'user.id': 'ann' } });
      const rec = await judged(sc, runId);
      next.end();
      top.end();
      client.close();
      await sc.close();
      sc = undefined;
      return rec.judgement!;
    };
    const emit = await judgeEvicted('emit');
    expect(emit).toMatchObject({ verdict: 'abandoned', expected: 3, delivered: 3, reasons: {} });
    const audit = await judgeEvicted('audit');
    // The tool's recorded deliveries count. The top-level span had not ended, so its own agent.event was not
    // exported yet (a span's events reach the sidecar with its end): its agent_started counts as evicted.
    expect(audit).toMatchObject({ verdict: 'abandoned', expected: 3, delivered: 2, reasons: { evicted: 1 }, undeliveredByType: { agent_started: 1 } });
    expect(audit.explanation).toBe("The run was given up before its top-level agent span ended because tracewire's in-flight run limit was reached; 2 of 3 events had been delivered.");
  });
});
