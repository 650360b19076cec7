import { context, trace, type Context, type Span, type Tracer } from '@opentelemetry/api';
import { afterEach, describe, expect, it } from 'vitest';
import type { EventType } from '../../src/audit/Metrics.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connectAcked, inProcessTracer, metricValue, startTestSidecar } from '../helpers.js';
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
});
