import { randomBytes } from 'node:crypto';
import { context, trace } from '@opentelemetry/api';
import { afterEach, describe, expect, it } from 'vitest';
import type { SpanInput } from '../../src/conventions/SpanInput.js';
import { DEMO_EXPECTED, runDemoAgent } from '../../src/demo/demoAgent.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connect, connectAcked, inProcessTracer, metricValue, startTestSidecar, until, type Frame, type TestClient } from '../helpers.js';

/**
 * Resume: a client that lost its connection names, per run, the last seq it
 * saw (in the URL or in a resume frame) and receives what it missed, in
 * order, without duplicates. Events for a user with no connection are held
 * and delivered (late) on connect, or dropped as no_subscriber once the hold
 * window has passed.
 */

const N = DEMO_EXPECTED.length; // 11
const ALL = Array.from({ length: N }, (_, i) => i + 1);

let sc: Sidecar | undefined;
const clients: TestClient[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.ws.terminate();
  await sc?.close();
  sc = undefined;
});

function track(c: TestClient): TestClient {
  clients.push(c);
  return c;
}

const seqsOf = (evs: Frame[], runId?: string): number[] => evs.filter((e) => runId === undefined || e.run_id === runId).map((e) => e.seq as number);
const errorsOf = (c: TestClient): Frame[] => c.frames.filter((f) => f.type === 'error');
const closed = (c: TestClient): Promise<void> => c.until((x) => x.closeCode !== undefined, 5000, 'close');

async function runDetail(s: Sidecar, runId: string): Promise<{ events: Array<Record<string, unknown>>; verdict: string | null }> {
  const res = await fetch(`${s.publicUrl}/api/runs/${encodeURIComponent(runId)}`);
  expect(res.status).toBe(200);
  return (await res.json()) as { events: Array<Record<string, unknown>>; verdict: string | null };
}

/**
 * Runs the demo agent (11 events, a step every 30 ms) for `user`; `first`
 * is connected; it leaves after 4 events (a clean close, or an abrupt
 * terminate). Resolves with what it saw, the run id and the run's promise.
 */
async function leaveMidRun(s: Sidecar, user: string, first: TestClient, how: 'close' | 'terminate') {
  const { tracer } = inProcessTracer(s);
  let finished = false;
  const run = runDemoAgent(tracer, { user, stepMillis: 30 }).then((ids) => {
    finished = true;
    return ids;
  });
  await first.until((c) => c.events.length >= 4, 5000, '4 events');
  if (how === 'close') {
    first.close();
    await closed(first);
  } else {
    first.ws.terminate();
    await closed(first);
  }
  const seen = seqsOf(first.events);
  expect(finished).toBe(false); // still mid-run
  expect(seen.length).toBeLessThan(N);
  return { seen, runId: first.events[0]!.run_id as string, run, isFinished: () => finished };
}

describe('resume after a disconnect in the middle of a run', () => {
  it('via ?resume=<run_id>:<seq> in the URL: the client ends with exactly 1..11, in order (user had no other connection)', async () => {
    sc = await startTestSidecar();
    const a = track(await connectAcked(sc, 'alice'));
    const { seen, runId, run, isFinished } = await leaveMidRun(sc, 'alice', a, 'close');
    // Two events are published while alice has no connection: they are held (and retained for resume).
    await until(() => sc!.tw.hub.stats().held >= 2, 5000, 'two held events');
    const b = track(await connectAcked(sc, 'alice', `resume=${runId}:${seen.at(-1)}`));
    expect(isFinished()).toBe(false); // reconnected while the run goes on
    expect(sc.tw.hub.stats().held).toBe(0); // the resume took them out of the hold: sent once
    await run;
    await b.until((c) => seen.length + c.events.length >= N, 5000, 'the rest of the run');
    await new Promise((r) => setTimeout(r, 100)); // nothing more arrives (no duplicates)
    expect([...seen, ...seqsOf(b.events)]).toEqual(ALL);
    expect(errorsOf(b)).toEqual([]);
    expect(b.events.map((e) => e.type)).toEqual(DEMO_EXPECTED.slice(seen.length).map((e) => e.type));
    // Every event reached the user: the verdict is complete once judged.
    await until(() => sc!.tw.ledger.get(runId)?.judgement !== undefined, 5000, 'verdict');
    expect(sc.tw.ledger.get(runId)!.judgement!.verdict).toBe('complete');
  });

  it('via ?resume= after an abrupt disconnect while another tab of the user stays connected (replay, not the hold)', async () => {
    sc = await startTestSidecar();
    const tab = track(await connectAcked(sc, 'alice'));
    const a = track(await connectAcked(sc, 'alice'));
    const { seen, runId, run, isFinished } = await leaveMidRun(sc, 'alice', a, 'terminate');
    // Let the run go on without this client for two more events.
    await tab.until((c) => c.events.length >= seen.length + 2, 5000, 'two more events');
    const b = track(await connectAcked(sc, 'alice', `resume=${runId}:${seen.at(-1)}`));
    expect(isFinished()).toBe(false);
    await run;
    await b.until((c) => seen.length + c.events.length >= N, 5000, 'the rest of the run');
    await tab.until((c) => c.events.length >= N, 5000, 'the other tab');
    await new Promise((r) => setTimeout(r, 100));
    expect([...seen, ...seqsOf(b.events)]).toEqual(ALL);
    expect(seqsOf(tab.events)).toEqual(ALL);
    // The missed events came from the replay store (the other tab had them, so nothing was held).
    expect(await metricValue(sc, 'tracewire_events_replayed_total')).toBeGreaterThan(0);
  });

  it('via a resume frame sent right after open (user had no other connection): exactly 1..11, in order', async () => {
    sc = await startTestSidecar();
    const a = track(await connectAcked(sc, 'alice'));
    const { seen, runId, run } = await leaveMidRun(sc, 'alice', a, 'close');
    await until(() => sc!.tw.hub.stats().held >= 2, 5000, 'two held events');
    const b = track(await connect(sc, { user: 'alice' }));
    b.ws.send(JSON.stringify({ type: 'resume', runs: { [runId]: seen.at(-1) } }));
    await run;
    await b.until((c) => seen.length + c.events.length >= N, 5000, 'the rest of the run');
    await new Promise((r) => setTimeout(r, 100));
    // The held events went out on connect; the resume frame found nothing this connection lacked.
    expect([...seen, ...seqsOf(b.events)]).toEqual(ALL);
    expect(errorsOf(b)).toEqual([]);
  });

  it('via a resume frame while another tab stays connected, reconnecting after the run ended: exactly the missed seqs, in order', async () => {
    sc = await startTestSidecar();
    const tab = track(await connectAcked(sc, 'alice'));
    const a = track(await connectAcked(sc, 'alice'));
    const { seen, runId, run } = await leaveMidRun(sc, 'alice', a, 'close');
    await run;
    await tab.until((c) => c.events.length >= N, 5000, 'the other tab');
    const b = track(await connectAcked(sc, 'alice'));
    expect(b.events).toEqual([]); // nothing was held: the other tab got everything
    b.ws.send(JSON.stringify({ type: 'resume', runs: { [runId]: seen.at(-1) } }));
    await b.until((c) => seen.length + c.events.length >= N, 5000, 'the rest of the run');
    // The same frame again sends nothing more: this connection has those seqs already.
    b.ws.send(JSON.stringify({ type: 'resume', runs: { [runId]: seen.at(-1) } }));
    await new Promise((r) => setTimeout(r, 100));
    expect([...seen, ...seqsOf(b.events)]).toEqual(ALL);
    expect(errorsOf(b)).toEqual([]);
  });

  it('via a resume frame mid-run while another tab stays connected: no gap and no duplicate (live events that raced the frame come first)', async () => {
    sc = await startTestSidecar();
    const tab = track(await connectAcked(sc, 'alice'));
    const a = track(await connectAcked(sc, 'alice'));
    const { seen, runId, run } = await leaveMidRun(sc, 'alice', a, 'close');
    await tab.until((c) => c.events.length >= seen.length + 2, 5000, 'two more events');
    const b = track(await connect(sc, { user: 'alice' }));
    b.ws.send(JSON.stringify({ type: 'resume', runs: { [runId]: seen.at(-1) } }));
    await run;
    await b.until((c) => seen.length + c.events.length >= N, 5000, 'the rest of the run');
    await new Promise((r) => setTimeout(r, 100));
    const got = [...seen, ...seqsOf(b.events)];
    expect([...got].sort((x, y) => x - y)).toEqual(ALL);
    expect(got).toHaveLength(N);
    expect(await metricValue(sc, 'tracewire_events_replayed_total')).toBeGreaterThanOrEqual(2);
  });
});

describe('resume of runs the client never heard of (resume_all / "all": true)', () => {
  it('a run that started and ended while the client was away (another tab got it) is sent whole, after the named runs', async () => {
    sc = await startTestSidecar();
    const tab = track(await connectAcked(sc, 'ivy'));
    const a = track(await connectAcked(sc, 'ivy'));
    const { seen, runId, run } = await leaveMidRun(sc, 'ivy', a, 'close');
    await run;
    // A second run, entirely while this client is away.
    const { tracer } = inProcessTracer(sc);
    const ids2 = await runDemoAgent(tracer, { user: 'ivy' });
    const run2 = `${ids2.traceId}-${ids2.spanId}`;
    await tab.until((c) => c.events.length >= 2 * N, 5000, 'both runs on the other tab');
    const b = track(await connectAcked(sc, 'ivy', `resume=${runId}:${seen.at(-1)}&resume_all=1`));
    await b.until((c) => c.events.length >= N - seen.length + N, 5000, 'the rest of run 1 and all of run 2');
    await new Promise((r) => setTimeout(r, 100));
    expect(b.events.map((e) => `${e.run_id === runId ? 1 : e.run_id === run2 ? 2 : '?'}:${e.seq}`)).toEqual([
      ...ALL.slice(seen.length).map((q) => `1:${q}`),
      ...ALL.map((q) => `2:${q}`),
    ]);
    // Naming both runs as complete with all=true again sends nothing.
    b.ws.send(JSON.stringify({ type: 'resume', runs: { [runId]: N, [run2]: N }, all: true }));
    const c = track(await connect(sc, { user: 'ivy' }));
    c.ws.send(JSON.stringify({ type: 'resume', runs: { [runId]: N, [run2]: N }, all: true }));
    await new Promise((r) => setTimeout(r, 150));
    expect(b.events).toHaveLength(N - seen.length + N);
    expect(c.events).toEqual([]);
  });
});

describe('resume window and protocol details', () => {
  it('tells the client which seqs are past the window and sends what is retained', async () => {
    sc = await startTestSidecar({ replayMaxEventsPerRun: 3 });
    const tab = track(await connectAcked(sc, 'dana'));
    const { tracer } = inProcessTracer(sc);
    await runDemoAgent(tracer, { user: 'dana' });
    await tab.until((c) => c.events.length >= N, 5000, 'run');
    const runId = tab.events[0]!.run_id as string;
    const b = track(await connectAcked(sc, 'dana', `resume=${runId}:2`));
    await b.until((c) => c.events.length >= 3, 5000, 'retained events');
    expect(seqsOf(b.events)).toEqual([9, 10, 11]);
    // The frame names the run and the lost range in fields a client acts on (it skips the hole instead of waiting).
    expect(errorsOf(b)).toEqual([{ type: 'error', code: 'TW_WS_BAD_FIELD', message: `bad field runs.${runId}: events 3..8 are past the resume window`, run_id: runId, from_seq: 3, to_seq: 8 }]);
  });

  it("answers a resume of an unknown run, or of another user's run, the same way, and sends nothing", async () => {
    sc = await startTestSidecar();
    const owner = track(await connectAcked(sc, 'erin'));
    const { tracer } = inProcessTracer(sc);
    await runDemoAgent(tracer, { user: 'erin' });
    await owner.until((c) => c.events.length >= N, 5000, 'run');
    const runId = owner.events[0]!.run_id as string;
    // One error frame for the whole resume, naming both runs alike.
    const other = track(await connectAcked(sc, 'mallory', `resume=${runId}:0,nope:3`));
    await other.until((c) => errorsOf(c).length >= 1, 5000, 'errors');
    await new Promise((r) => setTimeout(r, 50));
    expect(other.events).toEqual([]);
    expect(errorsOf(other).map((e) => e.message)).toEqual([`bad field runs: 2 runs unknown or outside the resume window: ${runId}, nope`]);
    // Several runs: no run_ids (the answer stays small); one run: run_ids names it in full.
    expect(errorsOf(other).map((e) => e.run_ids)).toEqual([undefined]);
    // One run alone: the message names it as before.
    const single = track(await connectAcked(sc, 'mallory', `resume=${runId}:0`));
    await single.until((c) => errorsOf(c).length >= 1, 5000, 'error');
    expect(errorsOf(single).map((e) => [e.message, e.run_ids])).toEqual([[`bad field runs.${runId}: run unknown or outside the resume window`, [runId]]]);
  });

  it('names the seqs lost in the middle of a run (held while the user was away, then given up), to a URL resume and to a resume frame', async () => {
    sc = await startTestSidecar({ replayRetentionMillis: 400 });
    const { tracer } = inProcessTracer(sc);
    const top = tracer.startSpan('invoke_agent planner', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'planner', 'user.id': 'nina' } });
    const ctx = trace.setSpan(context.active(), top);
    const tool = (): void => tracer.startSpan('execute_tool lookup', { attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'lookup' } }, ctx).end();
    const runId = `${top.spanContext().traceId}-${top.spanContext().spanId}`;
    const a = track(await connectAcked(sc, 'nina'));
    tool(); // seq 1..3
    await a.until((c) => c.events.length >= 3, 5000, 'seq 1..3');
    a.close();
    await closed(a);
    await until(() => sc!.tw.hub.connectionCount === 0, 5000, 'no connection');
    tool(); // seq 4, 5: held, then given up (no_subscriber) after the hold window
    await until(() => sc!.tw.hub.stats().held === 2, 5000, 'two held events');
    await until(() => sc!.tw.hub.stats().held === 0, 5000, 'hold expiry');
    expect(await metricValue(sc, 'tracewire_events_dropped_total', { reason: 'no_subscriber' })).toBe(2);
    tool(); // seq 6, 7: held
    await until(() => sc!.tw.hub.stats().held === 2, 5000, 'two more held events');
    const hole = { type: 'error', code: 'TW_WS_BAD_FIELD', message: `bad field runs.${runId}: events 4..5 are past the resume window`, run_id: runId, from_seq: 4, to_seq: 5 };

    // URL form: 1..3 are in the window, 6..7 in the hold; 4..5 are gone, and the client is told before 6.
    const b = track(await connectAcked(sc, 'nina', `resume=${runId}:3`));
    await b.until((c) => c.events.length >= 2, 5000, 'seq 6, 7');
    expect(b.frames.slice(1).map((f) => (f.type === 'error' ? f : f.seq))).toEqual([hole, 6, 7]);

    // Frame form (the window now holds 1..3 and 6..7): the same error, then 6, 7.
    const c = track(await connectAcked(sc, 'nina'));
    c.ws.send(JSON.stringify({ type: 'resume', runs: { [runId]: 3 } }));
    await c.until((x) => x.events.length >= 2, 5000, 'seq 6, 7');
    expect(c.frames.slice(1).map((f) => (f.type === 'error' ? f : f.seq))).toEqual([hole, 6, 7]);
    // Resuming from past the hole: nothing to report, nothing to send.
    c.ws.send(JSON.stringify({ type: 'resume', runs: { [runId]: 5 } }));
    c.ws.send(JSON.stringify({ type: 'ping' }));
    await c.until((x) => x.frames.some((f) => f.type === 'pong'), 5000, 'pong');
    expect(errorsOf(c)).toEqual([hole]);
    // An ack past the hole acknowledges what was delivered, never the lost 4..5.
    c.ws.send(JSON.stringify({ type: 'ack', run_id: runId, seq: 7 }));
    c.ws.send(JSON.stringify({ type: 'ping' }));
    await c.until((x) => x.frames.filter((f) => f.type === 'pong').length >= 2, 5000, 'second pong');
    expect((await runDetail(sc, runId)).events.map((e) => e.acked)).toEqual([true, true, true, false, false, true, true]);
    top.end();
  });

  it('what a connection remembers of the runs its resumes named stays bounded: runs that left the window are let go', async () => {
    sc = await startTestSidecar({ replayRetentionMillis: 200 });
    const s = sc;
    const tab = track(await connectAcked(s, 'rex'));
    const { tracer } = inProcessTracer(s);
    const conn = [...(s.tw.hub as unknown as { all: Set<{ resumedRuns?: Set<string> }> }).all][0]!;
    const named = new Set<string>();
    for (let round = 0; round < 8; round++) {
      await Promise.all(Array.from({ length: 50 }, () => runDemoAgent(tracer, { user: 'rex' })));
      await tab.until((c) => c.events.length >= (round + 1) * 50 * N, 10_000, `round ${round}`);
      const runs: Record<string, number> = {};
      for (const e of tab.events) if (!named.has(e.run_id as string)) runs[e.run_id as string] = N;
      for (const id of Object.keys(runs)) named.add(id);
      tab.ws.send(JSON.stringify({ type: 'resume', runs }));
      // The next round after this round's runs left the window.
      await new Promise((r) => setTimeout(r, 350));
    }
    tab.ws.send(JSON.stringify({ type: 'ping' }));
    await tab.until((c) => c.frames.some((f) => f.type === 'pong'), 5000, 'pong');
    expect(named.size).toBe(400);
    // At most the runs named since the last let-go (about two rounds), not the 400 ever named.
    expect(conn.resumedRuns!.size).toBeLessThanOrEqual(300);
  });

  it('records client acks (cumulative) in the runs API detail', async () => {
    sc = await startTestSidecar();
    const c = track(await connectAcked(sc, 'fay'));
    const { tracer } = inProcessTracer(sc);
    await runDemoAgent(tracer, { user: 'fay' });
    await c.until((x) => x.events.length >= N, 5000, 'run');
    const runId = c.events[0]!.run_id as string;
    c.ws.send(JSON.stringify({ type: 'ack', run_id: runId, seq: 3 }));
    c.ws.send(JSON.stringify({ type: 'ack', run_id: runId, seq: 7 }));
    c.ws.send(JSON.stringify({ type: 'ping' }));
    await c.until((x) => x.frames.some((f) => f.type === 'pong'), 5000, 'pong');
    const detail = await runDetail(sc, runId);
    expect(detail.events.map((e) => e.acked)).toEqual(ALL.map((s) => s <= 7));
    // An ack for another user's run changes nothing.
    const m = track(await connectAcked(sc, 'mallory'));
    m.ws.send(JSON.stringify({ type: 'ack', run_id: runId, seq: 11 }));
    m.ws.send(JSON.stringify({ type: 'ping' }));
    await m.until((x) => x.frames.some((f) => f.type === 'pong'), 5000, 'pong');
    expect((await runDetail(sc, runId)).events.map((e) => e.acked)).toEqual(ALL.map((s) => s <= 7));
  });
});

describe('events for a user with no connection', () => {
  it('are held and delivered on connect, counted as delivered late', async () => {
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    const ids = await runDemoAgent(tracer, { user: 'gus' });
    const runId = `${ids.traceId}-${ids.spanId}`;
    await new Promise((r) => setTimeout(r, 50));
    expect(sc.tw.hub.stats().held).toBe(N);
    const c = track(await connectAcked(sc, 'gus'));
    await c.until((x) => x.events.length >= N, 5000, 'held events');
    await new Promise((r) => setTimeout(r, 50));
    expect(seqsOf(c.events, runId)).toEqual(ALL);
    expect(await metricValue(sc, 'tracewire_events_delivered_late_total')).toBe(N);
    expect(await metricValue(sc, 'tracewire_events_delivered_total')).toBe(N);
    expect(await metricValue(sc, 'tracewire_events_dropped_total', { reason: 'no_subscriber' })).toBe(0);
    expect(sc.tw.hub.stats().held).toBe(0);
    const detail = await runDetail(sc, runId);
    expect(detail.events.every((e) => e.outcome === 'delivered' && e.late === true)).toBe(true);
  });

  it('enter the resume window only when a connection takes them: a later reconnect resumes from the replay', async () => {
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    const ids = await runDemoAgent(tracer, { user: 'ivy' });
    const runId = `${ids.traceId}-${ids.spanId}`;
    await new Promise((r) => setTimeout(r, 50));
    expect(sc.tw.hub.stats()).toMatchObject({ held: N, replayRuns: 0 });
    const first = track(await connectAcked(sc, 'ivy'));
    await first.until((x) => x.events.length >= N, 5000, 'held events');
    expect(sc.tw.hub.stats()).toMatchObject({ held: 0, replayRuns: 1 });
    first.ws.terminate();
    // The tab comes back having seen up to seq 4: it gets 5..N from the resume window, once each, in order.
    const again = track(await connect(sc, { user: 'ivy', query: `resume=${encodeURIComponent(runId)}:4` }));
    await again.until((x) => x.events.length >= N - 4, 5000, 'resumed events');
    await new Promise((r) => setTimeout(r, 50));
    expect(seqsOf(again.events, runId)).toEqual(ALL.slice(4));
    expect(errorsOf(again)).toEqual([]);
  });

  it('are bounded by maxHeldEvents: the oldest are dropped as no_subscriber, a later connection gets the newest in order', async () => {
    sc = await startTestSidecar({ maxHeldEvents: 5 });
    const { tracer } = inProcessTracer(sc);
    const ids = await runDemoAgent(tracer, { user: 'jo' });
    const runId = `${ids.traceId}-${ids.spanId}`;
    await new Promise((r) => setTimeout(r, 50));
    expect(sc.tw.hub.stats().held).toBe(5);
    expect(await metricValue(sc, 'tracewire_events_dropped_total', { reason: 'no_subscriber' })).toBe(N - 5);
    const c = track(await connectAcked(sc, 'jo'));
    await c.until((x) => x.events.length >= 5, 5000, 'held events');
    await new Promise((r) => setTimeout(r, 50));
    expect(seqsOf(c.events, runId)).toEqual(ALL.slice(N - 5));
    // The hold's accounting is back to nothing once the connection took what was left.
    expect(sc.tw.hub.stats()).toMatchObject({ held: 0, heldBytes: 0 });
  });

  it('are bounded by maxHeldBytes (estimated from the events, which are not serialised while held)', async () => {
    sc = await startTestSidecar({ maxHeldBytes: 1500 });
    const { tracer } = inProcessTracer(sc);
    await runDemoAgent(tracer, { user: 'kit' });
    await new Promise((r) => setTimeout(r, 50));
    const { held, heldBytes } = sc.tw.hub.stats();
    expect(heldBytes).toBeLessThanOrEqual(1500);
    expect(held).toBeGreaterThan(0);
    expect(held).toBeLessThan(N);
    expect(await metricValue(sc, 'tracewire_events_dropped_total', { reason: 'no_subscriber' })).toBe(N - held);
    // The estimate is close to the frames' real size (ASCII text): what a connection then receives.
    const c = track(await connectAcked(sc, 'kit'));
    await c.until((x) => x.events.length >= held, 5000, 'held events');
    const real = c.texts.slice(-held).reduce((a, t) => a + Buffer.byteLength(t) + 2, 0);
    expect(Math.abs(real - heldBytes) / real).toBeLessThan(0.1);
    expect(sc.tw.hub.stats()).toMatchObject({ held: 0, heldBytes: 0 });
  });

  it('with a tiny replayRetentionMillis are dropped as no_subscriber and never sent', async () => {
    sc = await startTestSidecar({ replayRetentionMillis: 30 });
    const { tracer } = inProcessTracer(sc);
    const ids = await runDemoAgent(tracer, { user: 'hal' });
    const runId = `${ids.traceId}-${ids.spanId}`;
    await until(() => sc!.tw.hub.stats().held === 0, 5000, 'hold expiry');
    expect(await metricValue(sc, 'tracewire_events_dropped_total', { reason: 'no_subscriber' })).toBe(N);
    const c = track(await connectAcked(sc, 'hal', `resume=${runId}:0`));
    await c.until((x) => errorsOf(x).length >= 1, 5000, 'resume error');
    await new Promise((r) => setTimeout(r, 100));
    expect(c.events).toEqual([]);
    expect(errorsOf(c)[0]!.message).toBe(`bad field runs.${runId}: run unknown or outside the resume window`);
    expect(await metricValue(sc, 'tracewire_events_delivered_late_total')).toBe(0);
    expect(await metricValue(sc, 'tracewire_events_delivered_total')).toBe(0);
    await until(() => sc!.tw.ledger.get(runId)?.judgement !== undefined, 5000, 'verdict');
    expect(sc.tw.ledger.get(runId)!.judgement).toMatchObject({ verdict: 'missing_events', mainReason: 'no_subscriber' });
  });
});

/**
 * One OTLP request's spans for a run of `user` in conversation `conv`,
 * children first as an exporter sends them: an agent, a thinking span, a
 * tool that fails, and a sub-agent; all ended. The same shape and times for
 * every call (only the ids are new).
 */
function otlpRun(user: string, conv: string): SpanInput[] {
  const hex = (n: number): string => randomBytes(n).toString('hex');
  const traceId = hex(16);
  const [top, llm, tool, sub] = [hex(8), hex(8), hex(8), hex(8)];
  const t0 = Date.now() - 1000;
  const span = (spanId: string, parentSpanId: string | undefined, name: string, attributes: Record<string, unknown>, start: number, end: number, statusCode = 0): SpanInput => ({ traceId, spanId, parentSpanId, name, startMs: t0 + start, endMs: t0 + end, attributes, statusCode });
  return [
    span(llm, top, 'chat gpt-4o', { 'gen_ai.operation.name': 'chat', 'gen_ai.request.model': 'gpt-4o' }, 1, 20.5),
    span(tool, top, 'execute_tool search "docs"', { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'search "docs"', 'gen_ai.tool.call.id': 'call_1', 'error.type': 'timeout' }, 21, 40.25, 2),
    span(sub, top, 'invoke_agent helper', { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'helper' }, 41, 60),
    span(top, undefined, 'invoke_agent boss', { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'boss', 'user.id': user, 'gen_ai.conversation.id': conv }, 0, 61),
  ];
}

/** A frame with the ids and times that differ between two runs of the same shape taken out. */
function shape(text: string): Record<string, unknown> {
  const { run_id: _r, trace_id: _t, span_id: _s, ts: _ts, ...rest } = JSON.parse(text) as Record<string, unknown>;
  return rest;
}

const OTLP_EVENTS = 7; // agent_started, agent_thinking, tool_executing, tool_completed, agent_started (helper), agent_completed (helper), agent_completed

describe('events of OTLP runs for a user with no connection (held as their ledger records)', () => {
  const noFault = (err: unknown): void => {
    throw err;
  };

  it('reach a later connection as exactly the frames a connected client gets, and the hold accounting returns to zero', async () => {
    sc = await startTestSidecar({}, true);
    const live = track(await connectAcked(sc, 'liv'));
    sc.tw.otlpBridges.ingest(otlpRun('liv', 'conv-x'), noFault);
    sc.tw.otlpBridges.ingest(otlpRun('abe', 'conv-x'), noFault);
    await live.until((x) => x.events.length >= OTLP_EVENTS, 5000, 'live events');
    expect(sc.tw.hub.stats().held).toBe(OTLP_EVENTS);
    expect(sc.tw.hub.stats().heldBytes).toBeGreaterThan(0);
    // Held as records: no event object was kept for any of them.
    expect((sc.tw.hub as unknown as { heldEvents: Map<unknown, unknown> }).heldEvents.size).toBe(0);
    const late = track(await connectAcked(sc, 'abe'));
    await late.until((x) => x.events.length >= OTLP_EVENTS, 5000, 'held events');
    const frames = (c: TestClient): string[] => c.texts.filter((t) => !t.startsWith('{"type":"ack"'));
    for (const t of frames(late)) expect(t).toBe(JSON.stringify(JSON.parse(t)));
    expect(frames(late).map(shape)).toEqual(frames(live).map(shape));
    expect(late.events.map((e) => e.type)).toEqual(['agent_started', 'agent_thinking', 'tool_executing', 'tool_completed', 'agent_started', 'agent_completed', 'agent_completed']);
    expect(late.events[3]!.data).toEqual({ tool: 'search "docs"', call_id: 'call_1', status: 'error', duration_ms: 19.25, error: 'timeout' });
    expect(late.events[4]!.data).toEqual({ agent: 'helper', parent_agent: 'boss' });
    expect(late.events.every((e) => e.conversation_id === 'conv-x')).toBe(true);
    expect(sc.tw.hub.stats()).toMatchObject({ held: 0, heldBytes: 0 });
    expect(await metricValue(sc, 'tracewire_events_delivered_late_total')).toBe(OTLP_EVENTS);
  });

  it('stay held past a connection narrowed to another conversation, and go to one of theirs', async () => {
    sc = await startTestSidecar({}, true);
    sc.tw.otlpBridges.ingest(otlpRun('bea', 'conv-a'), noFault);
    sc.tw.otlpBridges.ingest(otlpRun('bea', 'conv-b'), noFault);
    expect(sc.tw.hub.stats().held).toBe(2 * OTLP_EVENTS);
    const a = track(await connectAcked(sc, 'bea', 'conversation_id=conv-a'));
    await a.until((x) => x.events.length >= OTLP_EVENTS, 5000, 'conv-a events');
    await new Promise((r) => setTimeout(r, 50));
    expect(a.events.every((e) => e.conversation_id === 'conv-a')).toBe(true);
    expect(a.events).toHaveLength(OTLP_EVENTS);
    expect(sc.tw.hub.stats().held).toBe(OTLP_EVENTS);
    const b = track(await connectAcked(sc, 'bea', 'conversation_id=conv-b'));
    await b.until((x) => x.events.length >= OTLP_EVENTS, 5000, 'conv-b events');
    expect(b.events.every((e) => e.conversation_id === 'conv-b')).toBe(true);
    expect(sc.tw.hub.stats()).toMatchObject({ held: 0, heldBytes: 0 });
  });

  it('are bounded (oldest dropped as no_subscriber) and expire after the hold window, the accounting back to zero each time', async () => {
    sc = await startTestSidecar({ maxHeldEvents: 10, replayRetentionMillis: 300 }, true);
    for (let i = 0; i < 3; i++) sc.tw.otlpBridges.ingest(otlpRun('cy', 'conv-c'), noFault);
    expect(sc.tw.hub.stats().held).toBe(10);
    expect(await metricValue(sc, 'tracewire_events_dropped_total', { reason: 'no_subscriber' })).toBe(3 * OTLP_EVENTS - 10);
    await until(() => sc!.tw.hub.stats().held === 0, 5000, 'hold expiry');
    expect(sc.tw.hub.stats().heldBytes).toBe(0);
    expect(await metricValue(sc, 'tracewire_events_dropped_total', { reason: 'no_subscriber' })).toBe(3 * OTLP_EVENTS);
  });
});

