import { afterEach, describe, expect, it, vi } from 'vitest';
import { WebSocketServer } from 'ws';
import { TracewireClient, type WebSocketConstructor } from '../../src/client/TracewireClient.js';
import { ERRORS } from '../../src/errors/codes.js';
import { DEMO_EXPECTED, runDemoAgent } from '../../src/demo/demoAgent.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connectAcked, inProcessTracer, startTestSidecar, until, type TestClient } from '../helpers.js';
import { FaultProxy, RecordingClient } from './support.js';

/**
 * The WebSocket client against a real sidecar on port 0 (spans from the
 * in-process processor), through a TCP proxy that cuts or freezes
 * connections: what a chat page sees when the network drops.
 */

const N = DEMO_EXPECTED.length; // 11
const ALL = Array.from({ length: N }, (_, i) => i + 1);

let sc: Sidecar | undefined;
const cleanup: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
  await sc?.close();
  sc = undefined;
});

function recording(opts: ConstructorParameters<typeof RecordingClient>[0]): RecordingClient {
  const c = new RecordingClient({ minRetryDelayMillis: 20, maxRetryDelayMillis: 100, ...opts });
  cleanup.push(() => c.client.close());
  return c;
}

async function proxyTo(s: Sidecar): Promise<FaultProxy> {
  const p = await new FaultProxy(Number(new URL(s.publicUrl).port)).start();
  cleanup.push(() => p.close());
  return p;
}

/** A sidecar, a fault proxy in front of it, and a client of `user` through the proxy, open. */
async function openThroughProxy(user: string, opts: Partial<ConstructorParameters<typeof RecordingClient>[0]> = {}): Promise<{ s: Sidecar; proxy: FaultProxy; c: RecordingClient }> {
  sc = await startTestSidecar();
  const s = sc;
  const proxy = await proxyTo(s);
  const c = recording({ url: proxy.url, token: () => s.tw.token(user), ...opts });
  c.client.connect();
  await c.until((x) => x.client.status === 'open', 5000, 'open');
  return { s, proxy, c };
}

const wsUrl = (s: Sidecar): string => `${s.publicUrl.replace('http', 'ws')}/v1/events`;

async function runDetail(s: Sidecar, runId: string): Promise<{ events: Array<Record<string, unknown>>; verdict: string | null }> {
  const res = await fetch(`${s.publicUrl}/api/runs/${encodeURIComponent(runId)}`);
  expect(res.status).toBe(200);
  return (await res.json()) as { events: Array<Record<string, unknown>>; verdict: string | null };
}

describe('TracewireClient against a sidecar', () => {
  it('hands out a run once and in order, acknowledges it (runs API), and follows the run until its top-level completion', async () => {
    sc = await startTestSidecar();
    const s = sc;
    let tokens = 0;
    const c = recording({ url: wsUrl(s), token: () => (tokens++, s.tw.token('ada')) });
    c.client.connect();
    await c.until((x) => x.client.status === 'open', 5000, 'open');
    expect(c.statuses.find((x) => x.state === 'open')?.user).toBe('ada');
    const { tracer } = inProcessTracer(s);
    const ids = await runDemoAgent(tracer, { user: 'ada' });
    const runId = `${ids.traceId}-${ids.spanId}`;
    await c.until((x) => x.events.length >= N, 5000, 'the run');
    expect(c.seqs()).toEqual(ALL);
    expect(c.events.map((e) => [e.type, e.agent])).toEqual(DEMO_EXPECTED.map((e) => [e.type, e.agent]));
    expect(c.errors).toEqual([]);
    expect(tokens).toBe(1);
    // Acks coalesced per run: the runs API shows every event acknowledged.
    let detail = await runDetail(s, runId);
    for (let i = 0; i < 100 && !detail.events.every((e) => e.acked === true); i++) {
      await new Promise((r) => setTimeout(r, 20));
      detail = await runDetail(s, runId);
    }
    expect(detail.events.map((e) => e.acked)).toEqual(ALL.map(() => true));
    expect(c.client.positions()).toEqual({ [runId]: N });
    expect(c.client.stats).toMatchObject({ received: N, delivered: N, duplicates: 0, missed: 0, connects: 1, reconnects: 0 });
  });

  it('through a connection cut mid-run (another tab took the events meanwhile): reconnects with ?resume=<run>:<seq> and ends with every event exactly once, in order', async () => {
    sc = await startTestSidecar();
    const s = sc;
    const proxy = await proxyTo(s);
    const otherTab: TestClient = await connectAcked(s, 'bea');
    cleanup.push(() => otherTab.ws.terminate());
    const c = recording({ url: proxy.url, token: () => s.tw.token('bea') });
    c.client.connect();
    await c.until((x) => x.client.status === 'open', 5000, 'open');
    const { tracer } = inProcessTracer(s);
    const run = runDemoAgent(tracer, { user: 'bea', stepMillis: 40 });
    await c.until((x) => x.events.length >= 3, 5000, '3 events');
    proxy.freeze(); // nothing more reaches the client, then the connection drops
    await new Promise((r) => setTimeout(r, 120));
    proxy.thaw();
    proxy.cut();
    const ids = await run;
    const runId = `${ids.traceId}-${ids.spanId}`;
    await c.until((x) => x.events.length >= N, 8000, 'every event');
    await new Promise((r) => setTimeout(r, 100));
    expect(c.seqs()).toEqual(ALL);
    expect(c.events.every((e) => e.run_id === runId)).toBe(true);
    expect(c.opens()).toBe(2);
    expect(c.client.stats.reconnects).toBe(1);
    // The second upgrade named the run and the last seq handed out, and asked for the runs it never heard of.
    const second = proxy.requestLines[1]!;
    const q = new URL(second.split(' ')[1]!, 'http://x').searchParams;
    expect(q.get('resume')).toMatch(new RegExp(`^${runId}:([3-9]|10)$`));
    expect(q.get('resume_all')).toBe('1');
    expect(second).not.toContain('access_token'); // the token went in the subprotocol
    const reconnecting = c.statuses.find((x) => x.state === 'reconnecting');
    expect(reconnecting?.closeCode).toBe(1006);

    // Cut again after the run completed: the completed run is named with its last seq, so resume_all sends nothing again.
    proxy.cut();
    await c.until((x) => x.opens() === 3, 5000, 'the third open');
    await new Promise((r) => setTimeout(r, 100));
    expect(new URL(proxy.requestLines[2]!.split(' ')[1]!, 'http://x').searchParams.get('resume')).toBe(`${runId}:${N}`);
    expect(c.seqs()).toEqual(ALL);
    expect(c.client.stats.duplicates).toBe(0);
  });

  it('through a cut while the user had no other connection: the held events arrive on reconnect, none twice', async () => {
    const { s, proxy, c } = await openThroughProxy('cy', { auth: 'query' });
    const { tracer } = inProcessTracer(s);
    const run = runDemoAgent(tracer, { user: 'cy', stepMillis: 30 });
    await c.until((x) => x.events.length >= 4, 5000, '4 events');
    proxy.cut();
    await run;
    await c.until((x) => x.events.length >= N, 8000, 'every event');
    await new Promise((r) => setTimeout(r, 100));
    expect(c.seqs()).toEqual(ALL);
    expect(proxy.requestLines[0]).toContain('access_token=');
  });

  it('skips seqs the server reports lost (a gap, cause server) and forgets runs the server cannot resume', async () => {
    sc = await startTestSidecar({ replayMaxEventsPerRun: 3 });
    const s = sc;
    const tab = await connectAcked(s, 'dee');
    cleanup.push(() => tab.ws.terminate());
    const { tracer } = inProcessTracer(s);
    const ids = await runDemoAgent(tracer, { user: 'dee' });
    const runId = `${ids.traceId}-${ids.spanId}`;
    await tab.until((x) => x.events.length >= N, 5000, 'the run');
    const c = recording({ url: wsUrl(s), token: () => s.tw.token('dee'), resumeAll: 'never' });
    // As after a page reload that kept its positions: seen up to 2; another run the server no longer has.
    c.client.follow(runId, 2);
    c.client.follow('0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331', 4);
    c.client.connect();
    await c.until((x) => x.events.length >= 3, 5000, 'the retained events');
    await new Promise((r) => setTimeout(r, 50));
    expect(c.seqs()).toEqual([9, 10, 11]);
    expect(c.gaps).toEqual([{ run_id: runId, from_seq: 3, to_seq: 8, cause: 'server' }]);
    expect(c.client.stats.missed).toBe(6);
    expect(c.errors.map((e) => e.code)).toEqual(['TW_WS_BAD_FIELD', 'TW_WS_BAD_FIELD']);
    // The run the server could not resume is no longer named; the other one is followed to its end.
    expect(c.client.positions()).toMatchObject({ [runId]: N });
  });

  it('a run first heard of in the middle (its start went to another tab) is asked for from its start', async () => {
    sc = await startTestSidecar();
    const s = sc;
    const tab = await connectAcked(s, 'ike');
    cleanup.push(() => tab.ws.terminate());
    const { tracer } = inProcessTracer(s);
    const run = runDemoAgent(tracer, { user: 'ike', stepMillis: 30 });
    await tab.until((x) => x.events.length >= 4, 5000, '4 events in the other tab');
    const c = recording({ url: wsUrl(s), token: () => s.tw.token('ike'), resumeAll: 'never' });
    c.client.connect();
    await run;
    await c.until((x) => x.events.length >= N, 5000, 'the whole run');
    await new Promise((r) => setTimeout(r, 50));
    expect(c.seqs()).toEqual(ALL);
    expect(c.gaps).toEqual([]);
  });

  it('a fixed token the server refuses: one fatal error, state closed, no retry; a token function is asked again and gets in', async () => {
    sc = await startTestSidecar();
    const s = sc;
    const fixed = recording({ url: wsUrl(s), token: 'not-a-jwt' });
    fixed.client.connect();
    await fixed.until((x) => x.client.status === 'closed', 5000, 'closed');
    await new Promise((r) => setTimeout(r, 150));
    expect(fixed.statuses.map((x) => x.state)).toEqual(['connecting', 'closed']);
    expect(fixed.errors.map((e) => [e.code, e.fatal])).toEqual([
      ['TW_AUTH_INVALID', false],
      ['TW_CLIENT_STOPPED', true],
    ]);
    expect(fixed.statuses.at(-1)?.closeCode).toBe(4403);

    let calls = 0;
    const renewing = recording({ url: wsUrl(s), token: async () => (++calls === 1 ? 'expired-or-bad' : s.tw.token('eve')) });
    renewing.client.connect();
    await renewing.until((x) => x.client.status === 'open', 5000, 'open with the second token');
    expect(calls).toBe(2);
    expect(renewing.errors.map((e) => e.code)).toEqual(['TW_AUTH_INVALID']);
  });

  it('with no server: retries with growing, jittered waits, then gives up after maxAttempts (TW_CLIENT_GAVE_UP)', async () => {
    const dead = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    await new Promise((r) => dead.once('listening', r));
    const port = (dead.address() as { port: number }).port;
    await new Promise((r) => dead.close(r)); // a port nothing listens on
    const c = recording({ url: `ws://127.0.0.1:${port}/v1/events`, token: 't', minRetryDelayMillis: 20, maxRetryDelayMillis: 80, maxAttempts: 4 });
    c.client.connect();
    await c.until((x) => x.client.status === 'closed', 5000, 'gave up');
    const waits = c.statuses.filter((x) => x.state === 'reconnecting').map((x) => [x.attempt, x.retryInMillis!]);
    // Four attempts in all: the first and three retries.
    expect(waits.map(([a]) => a)).toEqual([1, 2, 3]);
    // Full jitter within [cap/2, cap], the cap doubling from 20 up to 80.
    for (const [attempt, wait] of waits) {
      const cap = Math.min(80, 20 * 2 ** (attempt! - 1));
      expect(wait).toBeGreaterThanOrEqual(cap / 2);
      expect(wait).toBeLessThanOrEqual(cap);
    }
    expect(c.errors.at(-1)).toMatchObject({ code: 'TW_CLIENT_GAVE_UP', fatal: true, message: 'gave up after 4 attempts in a row' });
  });

  it('a half-open connection (nothing comes back after a ping): TW_CLIENT_NO_PONG, reconnects, and gets what it missed', async () => {
    const { s, proxy, c } = await openThroughProxy('fox', { pingIntervalMillis: 150, pingTimeoutMillis: 200, connectTimeoutMillis: 500 });
    proxy.freeze();
    const { tracer } = inProcessTracer(s);
    const ids = await runDemoAgent(tracer, { user: 'fox' });
    await c.until((x) => x.errors.some((e) => e.code === 'TW_CLIENT_NO_PONG'), 5000, 'no pong');
    proxy.thaw();
    await c.until((x) => x.events.length >= N, 8000, 'the run after reconnecting');
    expect(c.seqs()).toEqual(ALL);
    expect(c.events[0]!.run_id).toBe(`${ids.traceId}-${ids.spanId}`);
    expect(c.opens()).toBe(2);
  });

  it('close() while the socket is still connecting (ws package): no crash, no connection left', async () => {
    sc = await startTestSidecar();
    const s = sc;
    const token = await s.tw.token('joy');
    const c = recording({ url: wsUrl(s), token });
    c.client.connect();
    c.client.close(); // the ws package emits 'error' for this socket on the next tick: it must have a listener
    await new Promise((r) => setTimeout(r, 200));
    expect(c.statuses.map((x) => x.state)).toEqual(['connecting', 'closed']);
    expect(s.tw.hub.connectionCount).toBe(0);
  });

  it('close() then connect() while a token request is in flight: one connection, and none after close()', async () => {
    sc = await startTestSidecar();
    const s = sc;
    // One shared in-flight token request, as a caching token function does.
    let inFlight: Promise<string> | undefined;
    const token = (): Promise<string> => (inFlight ??= new Promise<void>((r) => setTimeout(r, 100)).then(() => s.tw.token('kim')));
    const c = recording({ url: wsUrl(s), token });
    c.client.connect();
    c.client.close();
    c.client.connect();
    await c.until((x) => x.client.status === 'open', 5000, 'open');
    await new Promise((r) => setTimeout(r, 100));
    expect(s.tw.hub.connectionCount).toBe(1);
    c.client.close();
    await until(() => s.tw.hub.connectionCount === 0, 5000, 'no connection after close()');
  });

  it('a token function that never answers: the attempt times out (TW_CLIENT_TOKEN) and the next one gets in', async () => {
    sc = await startTestSidecar();
    const s = sc;
    let calls = 0;
    const c = recording({ url: wsUrl(s), token: () => (++calls === 1 ? new Promise<string>(() => undefined) : s.tw.token('lou')), connectTimeoutMillis: 200 });
    c.client.connect();
    await c.until((x) => x.client.status === 'open', 5000, 'open');
    expect(calls).toBe(2);
    expect(c.errors.map((e) => e.code)).toEqual(['TW_CLIENT_TOKEN']);
    expect(c.errors[0]!.message).toBe('no token: the token function did not answer within 200 ms');
  });

  it('maxAttempts bounds the attempts that fail in a row: after a drop of an open connection, maxAttempts reconnect attempts', async () => {
    const { proxy, c } = await openThroughProxy('max', { maxAttempts: 1 });
    proxy.refusing = true; // the server is gone: every new connection is reset
    proxy.cut();
    await c.until((x) => x.client.status === 'closed', 5000, 'gave up');
    expect(c.statuses.map((x) => x.state)).toEqual(['connecting', 'open', 'reconnecting', 'connecting', 'closed']);
    expect(c.errors.map((e) => [e.code, e.message, e.fatal])).toEqual([['TW_CLIENT_GAVE_UP', 'gave up after 1 attempts in a row', true]]);
  });

  it('a fatal error is told once the client is closed (a listener may connect() again); close() on a token timeout is honoured', async () => {
    sc = await startTestSidecar();
    const s = sc;
    const fixed = recording({ url: wsUrl(s), token: 'not-a-jwt' });
    let statusAtFatal: string | undefined;
    fixed.client.on('error', (e) => {
      if (e.fatal) statusAtFatal = fixed.client.status;
    });
    fixed.client.connect();
    await fixed.until((x) => x.errors.some((e) => e.fatal), 5000, 'the fatal error');
    expect(statusAtFatal).toBe('closed');

    let calls = 0;
    const hung = recording({ url: wsUrl(s), token: () => (calls++, new Promise<string>(() => undefined)), connectTimeoutMillis: 100 });
    hung.client.on('error', (e) => {
      if (e.code === 'TW_CLIENT_TOKEN') hung.client.close();
    });
    hung.client.connect();
    await hung.until((x) => x.client.status === 'closed', 5000, 'closed');
    await new Promise((r) => setTimeout(r, 400));
    expect(hung.statuses.map((x) => x.state)).toEqual(['connecting', 'closed']);
    expect(calls).toBe(1);
  });

  it('runs that do not fit the URL go in resume frames, `all` on the last: nothing is sent again', async () => {
    sc = await startTestSidecar();
    const s = sc;
    const proxy = await proxyTo(s);
    // About two run ids fit in this URL; the other runs of the user go in a frame.
    const c = recording({ url: proxy.url, token: () => s.tw.token('ned'), maxResumeUrlChars: 120 });
    c.client.connect();
    await c.until((x) => x.client.status === 'open', 5000, 'open');
    const { tracer } = inProcessTracer(s);
    for (let i = 0; i < 5; i++) await runDemoAgent(tracer, { user: 'ned' });
    await c.until((x) => x.events.length >= 5 * N, 5000, 'five runs');
    const replayed = async (): Promise<number> => Number((await (await fetch(`${s.publicUrl}/metrics`)).text()).match(/^tracewire_events_replayed_total (\d+)/m)?.[1] ?? 0);
    const before = await replayed();
    proxy.cut();
    await c.until((x) => x.opens() === 2, 5000, 'the second open');
    await new Promise((r) => setTimeout(r, 200));
    const q = new URL(proxy.requestLines[1]!.split(' ')[1]!, 'http://x').searchParams;
    expect(q.get('resume')!.split(',')).toHaveLength(2);
    expect(q.get('resume_all')).toBeNull(); // it went on the frame
    expect((await replayed()) - before).toBe(0);
    expect(c.client.stats.duplicates).toBe(0);
  });

  it('close() from the listener of a run\'s last event still acks it', async () => {
    sc = await startTestSidecar();
    const s = sc;
    const c = recording({ url: wsUrl(s), token: () => s.tw.token('ora') });
    c.client.on('event', (e) => {
      if (e.type === 'agent_completed' && e.run_id === `${e.trace_id}-${e.span_id}`) c.client.close();
    });
    c.client.connect();
    await c.until((x) => x.client.status === 'open', 5000, 'open');
    const { tracer } = inProcessTracer(s);
    const ids = await runDemoAgent(tracer, { user: 'ora', stepMillis: 80 });
    await c.until((x) => x.client.status === 'closed', 5000, 'closed at the run\'s end');
    const runId = `${ids.traceId}-${ids.spanId}`;
    await until(() => s.tw.ledger.get(runId)?.events.every((e) => e.acked) === true, 5000, 'every event acked');
  });

  it('close() stops for good: no reconnect, and connect() starts again', async () => {
    sc = await startTestSidecar();
    const s = sc;
    const c = recording({ url: wsUrl(s), token: () => s.tw.token('gil') });
    c.client.connect();
    await c.until((x) => x.client.status === 'open', 5000, 'open');
    c.client.close();
    expect(c.client.status).toBe('closed');
    await until(() => s.tw.hub.connectionCount === 0, 5000, 'server side closed');
    await new Promise((r) => setTimeout(r, 100));
    expect(c.statuses.filter((x) => x.state === 'connecting')).toHaveLength(1);
    c.client.connect();
    await c.until((x) => x.opens() === 2, 5000, 'open again');
  });
});

describe('TracewireClient ordering, against a scripted ws server', () => {
  const TERMINATE = Symbol('terminate');
  type Script = unknown[] | ((connection: number) => unknown[]);
  /**
   * A plain ws server that acks, then sends the given frames (per connection, numbered from 0; TERMINATE
   * resets the socket); `onFrame` answers the client's frames. Records what the client sends.
   */
  async function scripted(frames: Script, onFrame?: (send: (f: unknown) => void, m: Record<string, unknown>) => void): Promise<{ url: string; received: string[]; urls: string[] }> {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: (p) => (p.has('tracewire.v1') ? 'tracewire.v1' : false) });
    await new Promise((r) => wss.once('listening', r));
    cleanup.push(() => new Promise((r) => wss.close(r)));
    cleanup.push(() => {
      for (const ws of wss.clients) ws.terminate();
    });
    const received: string[] = [];
    const urls: string[] = [];
    let connections = 0;
    wss.on('connection', (ws, req) => {
      urls.push(req.url ?? '');
      const send = (f: unknown): void => ws.send(JSON.stringify(f));
      ws.on('message', (d) => {
        received.push(d.toString());
        onFrame?.(send, JSON.parse(d.toString()) as Record<string, unknown>);
      });
      send({ type: 'ack', protocol: 'tracewire.v1', user: 'u', connection_id: connections + 1, conversation_id: null });
      for (const f of typeof frames === 'function' ? frames(connections) : frames) {
        if (f === TERMINATE) ws.terminate();
        else send(f);
      }
      connections++;
    });
    return { url: `ws://127.0.0.1:${(wss.address() as { port: number }).port}/v1/events`, received, urls };
  }
  const ev = (seq: number, run = 'r1', type = 'agent_thinking') => ({ type, run_id: run, trace_id: 't', span_id: 's', seq, ts: '2026-01-01T00:00:00.000Z', data: {} });

  it('reorders by seq, drops duplicates, waits gapTimeoutMillis for a missing seq and then reports it (cause timeout)', async () => {
    const srv = await scripted([ev(1), ev(3), ev(2), ev(2), ev(5), ev(1, 'r2'), 'not an object', ev(6)]);
    const c = recording({ url: srv.url, token: 't', gapTimeoutMillis: 200, ackDelayMillis: 10 });
    c.client.connect();
    await c.until((x) => x.seqs('r1').length >= 3 && x.seqs('r2').length === 1, 5000, '1..3 and r2');
    expect(c.seqs('r1')).toEqual([1, 2, 3]); // 5 and 6 wait for 4
    const waited = Date.now();
    await c.until((x) => x.seqs('r1').length === 5, 5000, 'the timeout');
    expect(Date.now() - waited).toBeGreaterThanOrEqual(100);
    expect(c.seqs('r1')).toEqual([1, 2, 3, 5, 6]);
    expect(c.gaps).toEqual([{ run_id: 'r1', from_seq: 4, to_seq: 4, cause: 'timeout' }]);
    expect(c.client.stats.duplicates).toBe(1);
    expect(c.errors.map((e) => e.code)).toEqual(['TW_CLIENT_BAD_FRAME']);
    // Acks: cumulative per run, never past what was handed out.
    await until(() => srv.received.some((m) => m.includes('"seq":6')), 5000, 'ack of 6');
    const acks = srv.received.map((m) => JSON.parse(m) as { type: string; run_id: string; seq: number }).filter((m) => m.type === 'ack');
    const r1 = acks.filter((a) => a.run_id === 'r1').map((a) => a.seq);
    expect(r1).toEqual([...r1].sort((a, b) => a - b));
    expect(acks.at(-1)).toEqual({ type: 'ack', run_id: 'r1', seq: 6 });
  });

  it('past maxPendingPerRun skips the missing seqs at once (cause overflow); past maxRuns forgets the least recently active run', async () => {
    const srv = await scripted([ev(1), ev(3), ev(4), ev(5), ev(1, 'r2'), ev(1, 'r3')]);
    const c = recording({ url: srv.url, token: 't', maxPendingPerRun: 2, maxRuns: 2 });
    c.client.connect();
    await c.until((x) => x.events.length >= 6, 5000, 'all');
    expect(c.seqs('r1')).toEqual([1, 3, 4, 5]);
    expect(c.gaps).toEqual([{ run_id: 'r1', from_seq: 2, to_seq: 2, cause: 'overflow' }]);
    expect(Object.keys(c.client.positions())).toEqual(['r2', 'r3']);
    expect(c.client.stats.forgottenRuns).toBe(1);
  });

  it('asks at once for seqs missing before an event of a run it follows, once per hole, and hands the answer out in order', async () => {
    // The server has k 1..7 but sent 2 and 5 elsewhere (another tab, while this sidecar was cut off from the broker).
    const srv = await scripted([ev(1, 'k'), ev(3, 'k'), ev(4, 'k'), ev(6, 'k'), ev(7, 'k')], (send, m) => {
      const after = (m.runs as Record<string, number> | undefined)?.k;
      if (m.type === 'resume' && after !== undefined) for (const seq of [2, 5]) if (seq > after) send(ev(seq, 'k'));
    });
    const c = recording({ url: srv.url, token: 't', gapTimeoutMillis: 60_000, ackDelayMillis: 60_000 });
    c.client.connect();
    await c.until((x) => x.events.length >= 7, 2000, 'all seven, long before the gap timeout');
    expect(c.seqs()).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(c.gaps).toEqual([]);
    // One question at 3 (2 missing) and one at 6 (5 missing); none for 4 and 7, whose previous seq was waiting.
    const asks = srv.received.map((f) => JSON.parse(f) as { type: string; runs?: Record<string, number> }).filter((f) => f.type === 'resume');
    expect(asks).toEqual([{ type: 'resume', runs: { k: 1 } }, { type: 'resume', runs: { k: 1 } }]);
  });

  it('asks for the start of a run first heard of mid-way, and hands out nothing early when the server says the start is lost', async () => {
    const srv = await scripted([ev(3, 'm1'), { type: 'error', code: 'TW_WS_BAD_FIELD', message: 'bad field runs.m1: events 1..2 are past the resume window', run_id: 'm1', from_seq: 1, to_seq: 2 }, ev(4, 'm1')]);
    const c = recording({ url: srv.url, token: 't' });
    c.client.connect();
    await c.until((x) => x.events.length >= 2, 5000, '3 and 4');
    expect(c.seqs()).toEqual([3, 4]);
    expect(c.gaps).toEqual([{ run_id: 'm1', from_seq: 1, to_seq: 2, cause: 'server' }]);
    await until(() => srv.received.length > 0, 5000, 'a frame from the client');
    expect(JSON.parse(srv.received[0]!)).toEqual({ type: 'resume', runs: { m1: 0 } });
  });

  it('a hole the server names over events already waiting stops before them: they are handed out once, in order', async () => {
    // 4..6 of a run first heard of mid-way wait for 1..3; the server's window lacks 1..5 (it sent 4, 5 live before).
    const hole = { type: 'error', code: 'TW_WS_BAD_FIELD', message: 'bad field runs.h: events 1..5 are past the resume window', run_id: 'h', from_seq: 1, to_seq: 5 };
    const srv = await scripted([ev(4, 'h'), ev(5, 'h'), ev(6, 'h')], (send, m) => {
      if (m.type === 'resume') send(hole);
    });
    const c = recording({ url: srv.url, token: 't' });
    c.client.connect();
    await c.until((x) => x.events.length >= 3, 5000, '4..6');
    await new Promise((r) => setTimeout(r, 50));
    expect(c.seqs()).toEqual([4, 5, 6]);
    expect(c.gaps).toEqual([{ run_id: 'h', from_seq: 1, to_seq: 3, cause: 'server' }]);
    expect(c.client.positions()).toEqual({ h: 6 });
  });

  it('events still waiting when the connection drops get a gap timeout on the next connection (not stuck)', async () => {
    // Connection 0: seq 3 of a run (1, 2 never come), then a reset; connection 1: nothing for that run.
    const srv = await scripted((n) => (n === 0 ? [ev(3, 'p'), TERMINATE] : []));
    const c = recording({ url: srv.url, token: 't', gapTimeoutMillis: 200 });
    c.client.connect();
    await c.until((x) => x.opens() === 2, 5000, 'the second connection');
    await c.until((x) => x.events.length === 1, 5000, 'seq 3 after the gap timeout');
    expect(c.seqs()).toEqual([3]);
    expect(c.gaps).toEqual([{ run_id: 'p', from_seq: 1, to_seq: 2, cause: 'timeout' }]);
  });

  it('close() from an event listener: nothing more is handed out or acked', async () => {
    // 3 and 4 wait for 2: all three go out in one drain, which must stop at the close.
    const srv = await scripted([ev(1), ev(3), ev(4), ev(2)]);
    const c = recording({ url: srv.url, token: 't', ackDelayMillis: 10 });
    c.client.on('event', (e) => {
      if (e.seq === 2) c.client.close();
    });
    c.client.connect();
    await c.until((x) => x.client.status === 'closed', 5000, 'closed');
    await new Promise((r) => setTimeout(r, 100));
    expect(c.seqs()).toEqual([1, 2]);
    const acks = srv.received.map((m) => JSON.parse(m) as { type: string; seq: number }).filter((m) => m.type === 'ack');
    expect(acks.every((a) => a.seq <= 2)).toBe(true);
  });

  it('close() from a gap listener leaves no timer running and hands out nothing more', async () => {
    const srv = await scripted([ev(3, 'g'), ev(4, 'g')]);
    const c = recording({ url: srv.url, token: 't', gapTimeoutMillis: 100, pingIntervalMillis: 0 });
    c.client.on('gap', () => c.client.close());
    c.client.connect();
    await c.until((x) => x.client.status === 'closed', 5000, 'closed by the gap listener');
    // From here on, count the timers armed (a gap timer left running re-arms itself every 25 ms).
    const real = globalThis.setTimeout;
    let armed = 0;
    const spy = vi.spyOn(globalThis, 'setTimeout').mockImplementation(((fn: () => void, ms?: number) => {
      armed++;
      return real(fn, ms);
    }) as typeof setTimeout);
    await new Promise((r) => real(r, 300));
    spy.mockRestore();
    expect(c.events).toEqual([]);
    expect(c.gaps).toHaveLength(1);
    // At most the scripted server's own close-handshake timer (its socket answers the client's close); a gap
    // timer left running would have armed a dozen.
    expect(armed).toBeLessThanOrEqual(2);
  });

  it('seqs handed out but not acked before a drop are acked on the next connection', async () => {
    const srv = await scripted((n) => (n === 0 ? [ev(1, 'a'), ev(2, 'a'), ev(3, 'a'), TERMINATE] : []));
    const c = recording({ url: srv.url, token: 't', ackDelayMillis: 200 });
    c.client.connect();
    await c.until((x) => x.opens() === 2, 5000, 'the second connection');
    await until(() => srv.received.some((m) => m.includes('"ack"')), 5000, 'an ack');
    expect(srv.received.map((m) => JSON.parse(m) as Record<string, unknown>).filter((m) => m.type === 'ack')).toEqual([{ type: 'ack', run_id: 'a', seq: 3 }]);
  });

  it('follow() past events still waiting: they are not handed out, and a hole after the position is skipped from there', async () => {
    // Connection 0: seq 4 of h waits for 1..3, then the connection is gone. Connection 1 (after follow(h, 6)): 7..8 lost, 9.
    const hole = { type: 'error', code: 'TW_WS_BAD_FIELD', message: 'bad field runs.h: events 7..8 are past the resume window', run_id: 'h', from_seq: 7, to_seq: 8 };
    const srv = await scripted((n) => (n === 0 ? [ev(4, 'h')] : [hole, ev(9, 'h')]));
    const c = recording({ url: srv.url, token: 't' });
    c.client.connect();
    await until(() => srv.received.some((m) => m.includes('"resume"')), 5000, 'the request for the start of h');
    c.client.close();
    c.client.follow('h', 6);
    c.client.connect();
    await c.until((x) => x.events.length >= 1, 5000, 'seq 9');
    await new Promise((r) => setTimeout(r, 50));
    expect(c.seqs()).toEqual([9]);
    expect(c.gaps).toEqual([{ run_id: 'h', from_seq: 7, to_seq: 8, cause: 'server' }]);
  });

  it('follow() from a gap listener moves the position for good: what waited below it is not handed out', async () => {
    const srv = await scripted([ev(1, 'a'), ev(3, 'a'), ev(9, 'a')]);
    const c = recording({ url: srv.url, token: 't', gapTimeoutMillis: 100 });
    c.client.on('gap', () => c.client.follow('a', 8));
    c.client.connect();
    await c.until((x) => x.events.length >= 2, 5000, '1 and 9');
    await new Promise((r) => setTimeout(r, 50));
    expect(c.seqs()).toEqual([1, 9]);
    expect(c.gaps).toEqual([{ run_id: 'a', from_seq: 2, to_seq: 2, cause: 'timeout' }]);
  });

  it('a run the server called unknown is named again once its events arrive', async () => {
    const unknown = { type: 'error', code: 'TW_WS_BAD_FIELD', message: 'bad field runs.R: run unknown or outside the resume window', run_ids: ['R'] };
    const srv = await scripted((n) => (n === 0 ? [unknown, ev(1, 'R'), ev(2, 'R'), TERMINATE] : []));
    const c = recording({ url: srv.url, token: 't', resumeAll: 'never' });
    c.client.follow('R', 0);
    c.client.connect();
    await c.until((x) => x.opens() === 2, 5000, 'the second connection');
    expect(srv.urls.map((u) => new URL(u, 'http://x').searchParams.get('resume'))).toEqual(['R:0', 'R:2']);
  });

  it('an event whose run a gap listener pushed out (follow() at maxRuns 1) is not handed out', async () => {
    // b's first event forgets a (its waiting 3 is a gap); the gap listener follows z, which forgets b.
    const srv = await scripted([ev(1, 'a'), ev(3, 'a'), ev(1, 'b')]);
    const c = recording({ url: srv.url, token: 't', maxRuns: 1, gapTimeoutMillis: 5000 });
    c.client.on('gap', (g) => {
      if (g.run_id === 'a') c.client.follow('z', 5);
    });
    c.client.connect();
    await c.until((x) => x.gaps.length >= 1, 5000, 'the gap of a');
    await new Promise((r) => setTimeout(r, 100));
    expect(c.events.map((e) => `${e.run_id}#${e.seq}`)).toEqual(['a#1']);
    expect(c.client.positions()).toEqual({ z: 5 });
  });

  it('an event listener that throws does not stop delivery (TW_CLIENT_HANDLER)', async () => {
    const srv = await scripted([ev(1), ev(2)]);
    const c = recording({ url: srv.url, token: 't' });
    c.client.on('event', (e) => {
      if (e.seq === 1) throw new Error('boom');
    });
    c.client.connect();
    await c.until((x) => x.events.length >= 2, 5000, 'both');
    expect(c.errors).toEqual([{ code: 'TW_CLIENT_HANDLER', message: 'an event listener threw: boom', fatal: false }]);
  });
});

describe('TracewireClient options', () => {
  const WS = class {} as unknown as WebSocketConstructor;
  it('refuses bad options with a clear TypeError', () => {
    expect(() => new TracewireClient({ url: 'http://x', token: 't', WebSocket: WS })).toThrow('url must be a ws:// or wss:// URL');
    expect(() => new TracewireClient({ url: 'ws://x', token: 3 as unknown as string, WebSocket: WS })).toThrow('token must be a string or a function');
    const g = globalThis as { WebSocket?: unknown };
    const had = g.WebSocket;
    delete g.WebSocket; // Node 22 has one
    try {
      expect(() => new TracewireClient({ url: 'ws://x', token: 't' })).toThrow('no WebSocket here');
    } finally {
      if (had !== undefined) g.WebSocket = had;
    }
    expect(() => new TracewireClient({ url: 'ws://127.0.0.1:99999/v1/events', token: 't', WebSocket: WS })).toThrow('url must be a ws:// or wss:// URL');
    expect(() => new TracewireClient({ url: 'ws://exa mple.com/v1/events', token: 't', WebSocket: WS })).toThrow('url must be a ws:// or wss:// URL');
    expect(() => new TracewireClient({ url: 'ws://x', token: 't', WebSocket: WS, maxRuns: 0 })).toThrow('maxRuns must be a whole number from 1 to 1000000');
    expect(() => new TracewireClient({ url: 'ws://x', token: 't', WebSocket: WS, maxRuns: 2.5 })).toThrow('maxRuns must be a whole number');
    expect(() => new TracewireClient({ url: 'ws://x', token: 't', WebSocket: WS, maxResumeUrlChars: 40_000 })).toThrow('maxResumeUrlChars must be a whole number from 1 to 8000');
    expect(() => new TracewireClient({ url: 'ws://x', token: 't', WebSocket: WS, ackDelayMillis: -1 })).toThrow('ackDelayMillis must be a number of milliseconds from 0 to 2147483647');
    expect(() => new TracewireClient({ url: 'ws://x', token: 't', WebSocket: WS, maxRetryDelayMillis: 2 ** 32 })).toThrow('maxRetryDelayMillis must be a number of milliseconds from 1');
    expect(() => new TracewireClient({ url: 'ws://x', token: 't', WebSocket: WS, runTtlMillis: 1000 })).toThrow('runTtlMillis must be at least resumeWindowMillis');
    expect(() => new TracewireClient({ url: 'ws://x', token: 't', WebSocket: WS, auth: 'header' as 'query' })).toThrow('auth must be');
    expect(() => new TracewireClient({ url: 'ws://x', token: 't', WebSocket: WS }).follow('r', -1)).toThrow('a run id and a seq >= 0');
  });

  it('the package exports it as tracewire/client (the build `npm test` makes), with no import a browser cannot resolve', async () => {
    const { execFileSync } = await import('node:child_process');
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', "const { TracewireClient } = await import('tracewire/client'); console.log(typeof TracewireClient)"], { encoding: 'utf8' });
    expect(out.trim()).toBe('function');
    const { readFileSync } = await import('node:fs');
    for (const f of ['dist/client/TracewireClient.js', 'dist/errors/codes.js']) {
      const imports = [...readFileSync(f, 'utf8').matchAll(/^import .* from '([^']+)';/gm)].map((m) => m[1]);
      expect(imports.every((i) => i!.startsWith('.'))).toBe(true);
    }
  });

  it('every option is in the README section on the client', async () => {
    const { readFileSync } = await import('node:fs');
    const src = readFileSync(new URL('../../src/client/TracewireClient.ts', import.meta.url), 'utf8');
    const body = src.slice(src.indexOf('export interface TracewireClientOptions'), src.indexOf('interface Handlers'));
    const options = [...body.matchAll(/^ {2}readonly (\w+)\??:/gm)].map((m) => m[1]!);
    expect(options.length).toBeGreaterThanOrEqual(20);
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
    const section = readme.slice(readme.indexOf('### The client (`tracewire/client`)'), readme.indexOf('## Delivery and verdicts'));
    // Named in backquotes, or set in the example.
    expect(options.filter((o) => !new RegExp(`\`${o}[\`:]|\\b${o}: `).test(section))).toEqual([]);
  });

  it('every code the client reports is in the error catalogue', async () => {
    const src = await import('node:fs').then((fs) => fs.readFileSync(new URL('../../src/client/TracewireClient.ts', import.meta.url), 'utf8'));
    const used = new Set([...src.matchAll(/'(TW_CLIENT_[A-Z_]+)'/g)].map((m) => m[1]!));
    expect(used.size).toBeGreaterThanOrEqual(7);
    for (const code of used) expect(ERRORS).toHaveProperty(code);
  });
});
