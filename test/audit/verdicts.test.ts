import { context, trace } from '@opentelemetry/api';
import { afterEach, describe, expect, it } from 'vitest';
import { EVENT_TYPES } from '../../src/audit/Metrics.js';
import type { RunRecord } from '../../src/audit/RunRecord.js';
import { DEMO_EXPECTED, runDemoAgent } from '../../src/demo/demoAgent.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connectAcked, inProcessTracer, metricValue, startTestSidecar, until } from '../helpers.js';
import { countByType, getJson, judged, runIdOf } from './support.js';

let sc: Sidecar | undefined;
afterEach(async () => {
  await sc?.close();
  sc = undefined;
});

const EXPECTED_BY_TYPE = countByType(DEMO_EXPECTED.map((e) => e.type));
const ALL_UNDELIVERED = { agent_started: 2, agent_thinking: 3, tool_executing: 2, tool_completed: 2, agent_completed: 2 };

describe('run verdicts', () => {
  it('flags the silent failure: client connected and acked, agents ran, every send failed → missing_events / send_failed', async () => {
    sc = await startTestSidecar({ failWritesFor: (u) => u === 'dave' });
    const { tracer } = inProcessTracer(sc);
    const missingBefore = await metricValue(sc, 'tracewire_runs_total', { verdict: 'missing_events' });
    const client = await connectAcked(sc, 'dave');
    expect(client.frames[0]).toMatchObject({ type: 'ack', user: 'dave' });

    const runId = runIdOf(await runDemoAgent(tracer, { user: 'dave' }));
    const rec = await judged(sc, runId);

    expect(rec.judgement).toMatchObject({
      verdict: 'missing_events',
      mainReason: 'send_failed',
      expected: 11,
      delivered: 0,
      undeliveredByType: ALL_UNDELIVERED,
      reasons: { send_failed: 11 },
    });
    expect(rec.sawConnection).toBe(true);
    expect(await metricValue(sc, 'tracewire_runs_total', { verdict: 'missing_events' })).toBe(missingBefore + 1);
    expect(await metricValue(sc, 'tracewire_runs_total', { verdict: 'missing_events', reason: 'send_failed', agent: 'supervisor' })).toBe(1);
    expect(await metricValue(sc, 'tracewire_events_dropped_total', { reason: 'send_failed' })).toBe(11);
    expect(await metricValue(sc, 'tracewire_events_delivered_total')).toBe(0);

    const { status, body } = await getJson(sc, '/api/runs?verdict=missing_events');
    expect(status).toBe(200);
    expect(body.runs).toHaveLength(1);
    expect(body.runs[0]).toMatchObject({
      run_id: runId,
      user: 'dave',
      agent: 'supervisor',
      status: 'judged',
      verdict: 'missing_events',
      reason: 'send_failed',
      expected: 11,
      delivered: 0,
      connection_seen: true,
      undelivered_by_type: ALL_UNDELIVERED,
      reasons: { send_failed: 11 },
    });
    expect(body.runs[0].explanation).toBe(
      'Agents ran (11 events expected) and none reached user dave although a connection of the user was open: send_failed ×11.',
    );
    expect(body.runs[0].explanation).toContain('connection');
    expect(body.runs[0].explanation).toContain('open');
  });

  it('names no_subscriber when the same run has nobody connected', async () => {
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    const runId = runIdOf(await runDemoAgent(tracer, { user: 'dave' }));
    const rec = await judged(sc, runId);
    expect(rec.judgement).toMatchObject({
      verdict: 'missing_events',
      mainReason: 'no_subscriber',
      expected: 11,
      delivered: 0,
      undeliveredByType: ALL_UNDELIVERED,
      reasons: { no_subscriber: 11 },
    });
    expect(rec.sawConnection).toBe(false);
    expect(rec.judgement!.explanation).toBe('Agents ran (11 events expected) but none reached user dave: nobody was connected (no_subscriber ×11).');
    expect(await metricValue(sc, 'tracewire_runs_total', { verdict: 'missing_events' })).toBe(1);
    expect(await metricValue(sc, 'tracewire_runs_total', { verdict: 'missing_events', reason: 'no_subscriber' })).toBe(1);
    expect(await metricValue(sc, 'tracewire_runs_total', { reason: 'send_failed' })).toBe(0);
  });

  it('judges a healthy run complete; emitted and delivered per type equal the expected events, nothing dropped', async () => {
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    const client = await connectAcked(sc, 'alice');
    const runId = runIdOf(await runDemoAgent(tracer, { user: 'alice' }));
    const rec = await judged(sc, runId);
    expect(client.events).toHaveLength(11);
    expect(rec.judgement).toMatchObject({ verdict: 'complete', mainReason: 'none', expected: 11, delivered: 11, undeliveredByType: {}, reasons: {} });
    expect(rec.judgement!.explanation).toBe('All 11 expected events were delivered to user alice.');
    expect(EXPECTED_BY_TYPE).toEqual({ agent_started: 2, agent_thinking: 3, tool_executing: 2, tool_completed: 2, agent_completed: 2 });
    for (const type of EVENT_TYPES) {
      expect(await metricValue(sc, 'tracewire_events_emitted_total', { type }), type).toBe(EXPECTED_BY_TYPE[type]);
      expect(await metricValue(sc, 'tracewire_events_delivered_total', { type }), type).toBe(EXPECTED_BY_TYPE[type]);
      expect(await metricValue(sc, 'tracewire_events_delivered_late_total', { type }), type).toBe(0);
    }
    expect(await metricValue(sc, 'tracewire_events_dropped_total')).toBe(0);
    expect(await metricValue(sc, 'tracewire_runs_total', { verdict: 'complete', reason: 'none', agent: 'supervisor' })).toBe(1);
    expect(await metricValue(sc, 'tracewire_runs_total')).toBe(1);
    expect(await metricValue(sc, 'tracewire_runs_in_flight')).toBe(0);
    for (const ev of rec.events) expect(ev.connections, `seq ${ev.seq}`).toBe(1);
  });

  it('abandons a run whose top-level span never ends, after runTimeoutMillis', async () => {
    sc = await startTestSidecar({ runTimeoutMillis: 300 });
    const { tracer } = inProcessTracer(sc);
    const client = await connectAcked(sc, 'erin');
    const top = tracer.startSpan('invoke_agent supervisor', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'supervisor', 'user.id': 'erin' } });
    const openedAt = Date.now();
    tracer.startSpan('chat gpt-4o', { attributes: { 'gen_ai.operation.name': 'chat', 'gen_ai.request.model': 'gpt-4o' } }, trace.setSpan(context.active(), top)).end();
    const runId = runIdOf(top.spanContext());
    await client.until((c) => c.events.length === 2, 5000, 'two events');
    expect(client.events.map((e) => e.type)).toEqual(['agent_started', 'agent_thinking']);

    const rec = await judged(sc, runId, 3000);
    expect(Date.now() - openedAt).toBeGreaterThanOrEqual(300);
    expect(rec.judgement).toMatchObject({ verdict: 'abandoned', mainReason: 'none', expected: 2, delivered: 2 });
    expect(rec.judgement!.explanation).toBe('The top-level agent span did not end within 300 ms; 2 of 2 events were delivered before the run was given up.');
    expect(await metricValue(sc, 'tracewire_runs_total', { verdict: 'abandoned' })).toBe(1);
    expect(await metricValue(sc, 'tracewire_runs_in_flight')).toBe(0);
  });

  // Known bug in src/bridge (reported, not owned here): once the abandoned run is released, the in-process
  // trace is forgotten, so the late end of the top-level span opens a new run with the same run_id and a
  // second verdict (complete) replaces the abandoned one. Flip to `it` when the bridge keeps a tombstone.
  it('keeps the abandoned verdict when the top-level span ends after the timeout', async () => {
    sc = await startTestSidecar({ runTimeoutMillis: 200 });
    const { tracer } = inProcessTracer(sc);
    await connectAcked(sc, 'erin');
    const top = tracer.startSpan('invoke_agent supervisor', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'supervisor', 'user.id': 'erin' } });
    const runId = runIdOf(top.spanContext());
    const rec = await judged(sc, runId, 3000);
    expect(rec.judgement!.verdict).toBe('abandoned');
    top.end();
    await new Promise((r) => setTimeout(r, 300));
    expect(sc.tw.ledger.get(runId)?.judgement?.verdict).toBe('abandoned');
    expect(await metricValue(sc, 'tracewire_runs_total')).toBe(1);
  });

  it('judges partial when the client disconnects mid-run, with undelivered counts per type', async () => {
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    const s = sc;
    const client = await connectAcked(sc, 'carol');
    const runId = runIdOf(
      await runDemoAgent(tracer, {
        user: 'carol',
        stepMillis: 5,
        onStarted: async () => {
          await client.until((c) => c.events.length === 1, 5000, 'agent_started');
          client.close();
          await until(() => s.tw.hub.connectionCount === 0, 5000, 'disconnect');
        },
      }),
    );
    const rec = await judged(sc, runId);
    expect(client.events.map((e) => e.type)).toEqual(['agent_started']);
    expect(rec.judgement).toMatchObject({
      verdict: 'partial',
      mainReason: 'no_subscriber',
      expected: 11,
      delivered: 1,
      undeliveredByType: { agent_started: 1, agent_thinking: 3, tool_executing: 2, tool_completed: 2, agent_completed: 2 },
      reasons: { no_subscriber: 10 },
    });
    expect(rec.judgement!.explanation).toBe(
      '10 of 11 expected events did not reach user carol: agent_thinking ×3, tool_executing ×2, tool_completed ×2, agent_started ×1, agent_completed ×2 (no_subscriber ×10).',
    );
    expect(await metricValue(sc, 'tracewire_runs_total', { verdict: 'partial', reason: 'no_subscriber' })).toBe(1);

    const { body } = await getJson(sc, `/api/runs/${runId}`);
    expect(body.events.map((e: { outcome: string; reason: string | null }) => `${e.outcome}:${e.reason}`)).toEqual([
      'delivered:null',
      ...Array.from({ length: 10 }, () => 'dropped:no_subscriber'),
    ]);
    expect(body.events[1]).toMatchObject({ held: true, connections: 0, attempts: 0 });

    // The user comes back within the hold window: the held events are still delivered, late; the verdict stands.
    const back = await connectAcked(sc, 'carol');
    await back.until((c) => c.events.length === 10, 5000, 'held events');
    expect(rec.judgement!.verdict).toBe('partial');
    expect(await metricValue(sc, 'tracewire_events_delivered_late_total')).toBe(10);
    expect(await metricValue(sc, 'tracewire_events_delivered_total')).toBe(11);
    expect(await metricValue(sc, 'tracewire_runs_total')).toBe(1);
  });

  it('gives in-flight runs the interrupted verdict on shutdown', async () => {
    const verdicts: RunRecord[] = [];
    const s = await startTestSidecar({ onVerdict: (r) => verdicts.push(r) });
    const { tracer } = inProcessTracer(s);
    await connectAcked(s, 'frank');
    const top = tracer.startSpan('invoke_agent supervisor', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'supervisor', 'user.id': 'frank' } });
    await until(() => s.tw.ledger.inFlightCount === 1, 5000, 'run open');
    await s.close();
    expect(verdicts).toHaveLength(1);
    expect(verdicts[0]!.runId).toBe(runIdOf(top.spanContext()));
    expect(verdicts[0]!.judgement).toMatchObject({ verdict: 'interrupted', expected: 1, delivered: 1, mainReason: 'none' });
    expect(verdicts[0]!.judgement!.explanation).toBe('tracewire shut down while the run was in flight; 1 of 1 event had been delivered.');
    expect(await metricValue(s, 'tracewire_runs_total', { verdict: 'interrupted' })).toBe(1);
  });
});
