import { afterEach, describe, expect, it } from 'vitest';
import { DEMO_EXPECTED, runDemoAgent } from '../../src/demo/demoAgent.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connectAcked, inProcessTracer, metricValue, startTestSidecar, until, type Frame, type TestClient } from '../helpers.js';

let sc: Sidecar | undefined;
afterEach(async () => {
  await sc?.close();
  sc = undefined;
});

const runId = (ids: { traceId: string; spanId: string }): string => `${ids.traceId}-${ids.spanId}`;

/** Events of one connection grouped by run, in arrival order. */
function byRun(events: Frame[]): Map<string, Frame[]> {
  const m = new Map<string, Frame[]>();
  for (const e of events) {
    const id = e.run_id as string;
    const l = m.get(id);
    if (l) l.push(e);
    else m.set(id, [e]);
  }
  return m;
}

/** What a connection must have seen of one demo run: every event, seq 1..N in order, this run's ids. */
function expectWholeRun(evs: Frame[] | undefined, id: string, conversation: string): void {
  expect(evs, `run ${id}`).toBeDefined();
  expect(evs!.map((e) => e.seq)).toEqual(DEMO_EXPECTED.map((_, i) => i + 1));
  expect(evs!.map((e) => e.type)).toEqual(DEMO_EXPECTED.map((e) => e.type));
  expect(evs!.map((e) => e.agent)).toEqual(DEMO_EXPECTED.map((e) => e.agent));
  const [traceId, spanId] = id.split('-');
  expect(evs!.every((e) => e.run_id === id && e.trace_id === traceId && e.conversation_id === conversation)).toBe(true);
  expect(evs![0]!.span_id).toBe(spanId);
  expect(evs!.at(-1)!.span_id).toBe(spanId);
}

describe('per-user isolation', () => {
  it('200 concurrent runs across 50 users: each connection gets exactly its user\'s runs, in order, nobody else\'s', async () => {
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    const USERS = 50;
    const RUNS_PER_USER = 4;
    const users = Array.from({ length: USERS }, (_, i) => `user-${i}`);
    const clients = new Map<string, TestClient[]>();
    await Promise.all(users.map(async (u) => clients.set(u, await Promise.all([connectAcked(sc!, u), connectAcked(sc!, u)]))));
    expect(sc.tw.hub.connectionCount).toBe(USERS * 2);

    // Every run of every user at once, interleaved by the event loop.
    const jobs = users.flatMap((u) => Array.from({ length: RUNS_PER_USER }, (_, k) => ({ user: u, conversation: `${u}-conv-${k}` })));
    const results = await Promise.all(jobs.map(async (j, i) => ({ ...j, id: runId(await runDemoAgent(tracer, { ...j, stepMillis: 1 + (i % 2) })) })));
    expect(new Set(results.map((r) => r.id)).size).toBe(USERS * RUNS_PER_USER);

    const perUser = RUNS_PER_USER * DEMO_EXPECTED.length;
    for (const [u, cs] of clients) for (const c of cs) await c.until((x) => x.events.length >= perUser, 10_000, `${u}'s events`);
    // Nothing more arrives after the last expected event.
    await new Promise((r) => setTimeout(r, 100));

    for (const [u, cs] of clients) {
      const mine = results.filter((r) => r.user === u);
      for (const c of cs) {
        expect(c.frames.filter((f) => f.type === 'error')).toEqual([]);
        expect(c.frames.filter((f) => f.type === 'ack')).toEqual([expect.objectContaining({ user: u })]);
        expect(c.events).toHaveLength(perUser);
        const runs = byRun(c.events);
        expect(new Set(runs.keys())).toEqual(new Set(mine.map((r) => r.id)));
        for (const r of mine) expectWholeRun(runs.get(r.id), r.id, r.conversation);
      }
    }
    // The runs really were concurrent: a connection's stream interleaves events of several runs.
    const interleaved = [...clients.values()].flat().filter((c) => {
      const ids = c.events.map((e) => e.run_id);
      return ids.some((id, i) => i > 0 && id !== ids[i - 1] && ids.indexOf(id) < i - 1);
    });
    expect(interleaved.length).toBeGreaterThan(0);
    expect(await metricValue(sc, 'tracewire_events_emitted_total')).toBe(USERS * RUNS_PER_USER * DEMO_EXPECTED.length);
    expect(await metricValue(sc, 'tracewire_events_delivered_total')).toBe(USERS * RUNS_PER_USER * DEMO_EXPECTED.length);
    await until(() => sc!.tw.ledger.inFlightCount === 0, 5000, 'verdicts');
    expect(await metricValue(sc, 'tracewire_runs_total', { verdict: 'complete' })).toBe(USERS * RUNS_PER_USER);
    expect(await metricValue(sc, 'tracewire_events_dropped_total')).toBe(0);
  });

  it('a connection opened with ?conversation_id=c-2 receives only that conversation\'s runs', async () => {
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    const all = await connectAcked(sc, 'dave');
    const narrowed = await connectAcked(sc, 'dave', 'conversation_id=c-2');
    const otherUserSameConv = await connectAcked(sc, 'erin', 'conversation_id=c-2');
    expect(narrowed.frames[0]).toMatchObject({ type: 'ack', user: 'dave', conversation_id: 'c-2' });
    expect(all.frames[0]).toMatchObject({ type: 'ack', user: 'dave', conversation_id: null });

    const convs = ['c-1', 'c-2', 'c-3', 'c-2'];
    const runs = await Promise.all(convs.map(async (conversation) => ({ conversation, id: runId(await runDemoAgent(tracer, { user: 'dave', conversation, stepMillis: 1 })) })));
    // A run of another user in the same conversation id must not leak either way.
    const erinRun = runId(await runDemoAgent(tracer, { user: 'erin', conversation: 'c-2' }));

    await all.until((c) => c.events.length >= convs.length * DEMO_EXPECTED.length, 5000, 'all of dave\'s events');
    await narrowed.until((c) => c.events.length >= 2 * DEMO_EXPECTED.length, 5000, 'c-2 events');
    await otherUserSameConv.until((c) => c.events.length >= DEMO_EXPECTED.length, 5000, 'erin\'s events');
    await new Promise((r) => setTimeout(r, 100));

    expect(all.events).toHaveLength(convs.length * DEMO_EXPECTED.length);
    const allRuns = byRun(all.events);
    expect(new Set(allRuns.keys())).toEqual(new Set(runs.map((r) => r.id)));
    for (const r of runs) expectWholeRun(allRuns.get(r.id), r.id, r.conversation);

    expect(narrowed.events).toHaveLength(2 * DEMO_EXPECTED.length);
    const c2 = byRun(narrowed.events);
    const wanted = runs.filter((r) => r.conversation === 'c-2');
    expect(new Set(c2.keys())).toEqual(new Set(wanted.map((r) => r.id)));
    for (const r of wanted) expectWholeRun(c2.get(r.id), r.id, 'c-2');

    expect(otherUserSameConv.events).toHaveLength(DEMO_EXPECTED.length);
    expectWholeRun(byRun(otherUserSameConv.events).get(erinRun), erinRun, 'c-2');
  });

  it('a user with no connection gets nothing sent to other users\' connections', async () => {
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    const watcher = await connectAcked(sc, 'frank');
    await runDemoAgent(tracer, { user: 'grace' });
    const frankRun = runId(await runDemoAgent(tracer, { user: 'frank' }));
    await watcher.until((c) => c.events.length >= DEMO_EXPECTED.length, 5000, 'frank\'s events');
    await new Promise((r) => setTimeout(r, 100));
    expect(watcher.events).toHaveLength(DEMO_EXPECTED.length);
    expectWholeRun(watcher.events, frankRun, 'conv-frank');
  });
});
