import { SignJWT, UnsecuredJWT } from 'jose';
import { afterEach, describe, expect, it } from 'vitest';
import { DEMO_EXPECTED, runDemoAgent } from '../../src/demo/demoAgent.js';
import { ERRORS } from '../../src/errors/errors.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connect, connectAcked, inProcessTracer, metricValue, startTestSidecar, TEST_SECRET, until, type TestClient } from '../helpers.js';

let sc: Sidecar | undefined;
afterEach(async () => {
  await sc?.close();
  sc = undefined;
});

const key = (secret: string): Uint8Array => new TextEncoder().encode(secret);
const nowS = (): number => Math.floor(Date.now() / 1000);

async function sign(claims: { sub?: string; exp?: number; secret?: string; alg?: string } = {}): Promise<string> {
  let j = new SignJWT({}).setProtectedHeader({ alg: claims.alg ?? 'HS256', typ: 'JWT' }).setIssuedAt();
  if (claims.sub !== undefined) j = j.setSubject(claims.sub);
  j = j.setExpirationTime(claims.exp ?? nowS() + 3600);
  return j.sign(key(claims.secret ?? TEST_SECRET));
}

/** Waits for the refusal: one error frame, then the close with the code's close code. */
async function expectRefused(c: TestClient, code: keyof typeof ERRORS, message?: RegExp | string): Promise<void> {
  await c.until((x) => x.closeCode !== undefined, 5000, `close after ${code}`);
  expect(c.frames).toEqual([{ type: 'error', code, message: expect.any(String) }]);
  if (message !== undefined) expect(c.frames[0]!.message).toMatch(message);
  expect(c.closeCode).toBe((ERRORS[code] as { closeCode?: number }).closeCode);
  expect(c.closeReason).toBe(code);
}

/** Run a demo run for `user` while a valid connection of that user watches; returns once it saw every event. */
async function runWatched(user: string): Promise<void> {
  const { tracer } = inProcessTracer(sc!);
  const watcher = await connectAcked(sc!, user);
  await runDemoAgent(tracer, { user });
  await watcher.until((c) => c.events.length >= DEMO_EXPECTED.length, 5000, `${user}'s events`);
  await new Promise((r) => setTimeout(r, 50));
  watcher.close();
}

describe('WebSocket authentication', () => {
  it('no token: error frame TW_AUTH_MISSING, close 4401, never any event', async () => {
    sc = await startTestSidecar();
    const c = await connect(sc);
    await expectRefused(c, 'TW_AUTH_MISSING', /no token/);
    expect(ERRORS.TW_AUTH_MISSING.closeCode).toBe(4401);
    const empty = await connect(sc, { headers: { authorization: 'Bearer   ' } });
    await expectRefused(empty, 'TW_AUTH_MISSING');
    const basic = await connect(sc, { headers: { authorization: 'Basic YWxpY2U6eA==' } });
    await expectRefused(basic, 'TW_AUTH_MISSING');
    await runWatched('alice');
    for (const x of [c, empty, basic]) expect(x.events).toEqual([]);
    expect(await metricValue(sc, 'tracewire_ws_connection_attempts_total', { result: 'TW_AUTH_MISSING' })).toBe(3);
  });

  it('a token signed with another secret: TW_AUTH_INVALID, close 4403, never any event', async () => {
    sc = await startTestSidecar();
    const c = await connect(sc, { token: await sign({ sub: 'mallory', secret: 'not-the-secret-0123456789abcdef' }) });
    await expectRefused(c, 'TW_AUTH_INVALID', /^invalid token: /);
    expect(ERRORS.TW_AUTH_INVALID.closeCode).toBe(4403);
    await runWatched('mallory');
    expect(c.events).toEqual([]);
  });

  it('a garbage token, a tampered payload, alg none and a non-HS256 algorithm: TW_AUTH_INVALID, 4403', async () => {
    sc = await startTestSidecar();
    const good = await sign({ sub: 'mallory' });
    const [h, , s] = good.split('.');
    const tampered = `${h}.${Buffer.from(JSON.stringify({ sub: 'alice', exp: nowS() + 3600 })).toString('base64url')}.${s}`;
    const none = new UnsecuredJWT({}).setSubject('alice').setExpirationTime(nowS() + 3600).encode();
    const hs512 = await sign({ sub: 'alice', alg: 'HS512' });
    const clients = await Promise.all(['garbage', 'a.b.c', tampered, none, hs512].map((token) => connect(sc!, { token })));
    for (const c of clients) await expectRefused(c, 'TW_AUTH_INVALID');
    await runWatched('alice');
    for (const c of clients) expect(c.events).toEqual([]);
  });

  it('an expired token: TW_AUTH_EXPIRED naming the expiry, close 4402, never any event', async () => {
    sc = await startTestSidecar();
    const exp = nowS() - 60;
    const c = await connect(sc, { token: await sign({ sub: 'bob', exp }) });
    await expectRefused(c, 'TW_AUTH_EXPIRED', `token expired at ${new Date(exp * 1000).toISOString()}`);
    expect(ERRORS.TW_AUTH_EXPIRED.closeCode).toBe(4402);
    await runWatched('bob');
    expect(c.events).toEqual([]);
  });

  it('a valid token with no sub (or an empty sub): TW_AUTH_INVALID, close 4403', async () => {
    sc = await startTestSidecar();
    const noSub = await connect(sc, { token: await sign({}) });
    await expectRefused(noSub, 'TW_AUTH_INVALID', /no "sub"/);
    const emptySub = await connect(sc, { token: await sign({ sub: '' }) });
    await expectRefused(emptySub, 'TW_AUTH_INVALID', /no "sub"/);
    await runWatched('alice');
    expect(noSub.events).toEqual([]);
    expect(emptySub.events).toEqual([]);
  });

  it('a token with no exp claim: TW_AUTH_INVALID, close 4403 (exp is required)', async () => {
    sc = await startTestSidecar();
    const noExp = await new SignJWT({}).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setSubject('alice').setIssuedAt().sign(key(TEST_SECRET));
    const c = await connect(sc, { token: noExp });
    await expectRefused(c, 'TW_AUTH_INVALID', /"exp" claim/);
  });

  it('a token valid for longer than a Node timer can wait (24.8 days) keeps its connection until it really expires, then 4402', async () => {
    let offset = 0;
    sc = await startTestSidecar({ now: () => Date.now() + offset });
    // Nobody waits 24.8 days in a test: a timer armed for the longest delay Node takes fires after 20 ms instead.
    const realSetTimeout = globalThis.setTimeout;
    let longTimers = 0;
    globalThis.setTimeout = ((fn: (...a: unknown[]) => void, ms?: number, ...args: unknown[]) => {
      if (typeof ms === 'number' && ms >= 2 ** 31 - 1) {
        longTimers++;
        ms = 20;
      }
      return realSetTimeout(fn, ms, ...args);
    }) as typeof setTimeout;
    try {
      const c = await connect(sc, { token: await sc.tw.token('ivan', 30 * 86400) });
      await c.until((x) => x.frames.some((f) => f.type === 'ack'), 5000, 'ack');
      // The longest timer ran out twice: the token still has ~5 days left, so the connection stays and gets events.
      await until(() => longTimers >= 3, 5000, 'the expiry timer re-armed');
      expect(c.closeCode).toBeUndefined();
      const { tracer } = inProcessTracer(sc);
      await runDemoAgent(tracer, { user: 'ivan' });
      await c.until((x) => x.events.length >= DEMO_EXPECTED.length, 5000, 'events');
      expect(c.closeCode).toBeUndefined();
      // 31 days later (the hub's clock): the next time the timer runs out, the connection is closed as expired.
      offset = 31 * 86_400_000;
      await c.until((x) => x.closeCode !== undefined, 5000, 'expiry close');
      expect(c.closeCode).toBe(4402);
      expect(c.frames.at(-1)).toMatchObject({ type: 'error', code: 'TW_AUTH_EXPIRED' });
      expect(c.events).toHaveLength(DEMO_EXPECTED.length);
    } finally {
      globalThis.setTimeout = realSetTimeout;
    }
  });

  it('a token that expires while connected closes the connection with 4402', async () => {
    sc = await startTestSidecar();
    const c = await connect(sc, { token: await sc.tw.token('henry', 1) });
    await c.until((x) => x.frames.some((f) => f.type === 'ack'), 5000, 'ack');
    await c.until((x) => x.closeCode !== undefined, 3000, 'expiry close');
    expect(c.frames.map((f) => [f.type, f.code])).toEqual([['ack', undefined], ['error', 'TW_AUTH_EXPIRED']]);
    expect(c.closeCode).toBe(4402);
  });
});

describe('shutdown while a token is being verified', () => {
  it('the client gets a WebSocket with the error frame TW_WS_SHUTDOWN and close 1001 (which a browser can read), not an HTTP 503', async () => {
    sc = await startTestSidecar();
    const s = sc;
    const token = await s.tw.token('alice');
    let closing: Promise<void> | undefined;
    // Runs right after the hub's own upgrade listener has started verifying the token.
    s.publicApp.server.on('upgrade', () => {
      closing ??= s.tw.hub.close(5000);
    });
    const c = await connect(s, { token });
    await c.until((x) => x.closeCode !== undefined, 5000, 'close');
    expect(c.frames).toEqual([{ type: 'error', code: 'TW_WS_SHUTDOWN', message: 'server is shutting down; reconnect and resume' }]);
    expect(c.closeCode).toBe(1001);
    expect(c.closeReason).toBe('TW_WS_SHUTDOWN');
    await closing;
    expect(await metricValue(s, 'tracewire_ws_connection_attempts_total', { result: 'TW_WS_SHUTDOWN' })).toBe(1);
    expect(s.tw.hub.connectionCount).toBe(0);
  });
});

describe('where the token may come from', () => {
  it('Authorization: Bearer header', async () => {
    sc = await startTestSidecar();
    const c = await connectAcked(sc, 'alice');
    expect(c.frames).toEqual([{ type: 'ack', protocol: 'tracewire.v1', user: 'alice', connection_id: expect.any(Number), conversation_id: null }]);
  });

  it('?access_token= query parameter (browsers)', async () => {
    sc = await startTestSidecar();
    const token = await sc.tw.token('alice');
    const c = await connect(sc, { query: `access_token=${token}` });
    await c.until((x) => x.frames.length > 0, 5000, 'ack');
    expect(c.frames[0]).toMatchObject({ type: 'ack', user: 'alice' });
    const { tracer } = inProcessTracer(sc);
    await runDemoAgent(tracer, { user: 'alice' });
    await c.until((x) => x.events.length >= DEMO_EXPECTED.length, 5000, 'events');
    expect(c.events.map((e) => e.seq)).toEqual(DEMO_EXPECTED.map((_, i) => i + 1));
  });

  it('subprotocols [tracewire.v1, bearer.<jwt>] (browsers); the server selects tracewire.v1', async () => {
    sc = await startTestSidecar();
    const token = await sc.tw.token('alice');
    const c = await connect(sc, { protocols: ['tracewire.v1', `bearer.${token}`] });
    expect(c.ws.protocol).toBe('tracewire.v1');
    await c.until((x) => x.frames.length > 0, 5000, 'ack');
    expect(c.frames[0]).toMatchObject({ type: 'ack', protocol: 'tracewire.v1', user: 'alice' });
    const { tracer } = inProcessTracer(sc);
    await runDemoAgent(tracer, { user: 'alice' });
    await c.until((x) => x.events.length >= DEMO_EXPECTED.length, 5000, 'events');
    expect(c.events.map((e) => e.type)).toEqual(DEMO_EXPECTED.map((e) => e.type));
  });

  it('an empty Bearer header does not hide a token in the query', async () => {
    sc = await startTestSidecar();
    const token = await sc.tw.token('alice');
    const c = await connect(sc, { query: `access_token=${token}`, headers: { authorization: 'Bearer ' } });
    await c.until((x) => x.frames.length > 0, 5000, 'ack');
    expect(c.frames[0]).toMatchObject({ type: 'ack', user: 'alice' });
  });

  it('the header wins over the query: a bad header token is refused even with a good query token', async () => {
    sc = await startTestSidecar();
    const token = await sc.tw.token('alice');
    const c = await connect(sc, { query: `access_token=${token}`, headers: { authorization: 'Bearer garbage' } });
    await expectRefused(c, 'TW_AUTH_INVALID');
  });

  it('a bad token in the query is refused, not ignored', async () => {
    sc = await startTestSidecar();
    const c = await connect(sc, { query: 'access_token=garbage' });
    await expectRefused(c, 'TW_AUTH_INVALID');
  });
});

describe('client frames', () => {
  it('a frame that is not JSON gets TW_WS_BAD_FRAME; the connection stays open and still receives events', async () => {
    sc = await startTestSidecar();
    const c = await connectAcked(sc, 'alice');
    c.ws.send('this is not json');
    await c.until((x) => x.frames.some((f) => f.type === 'error'), 5000, 'error frame');
    expect(c.frames[1]).toEqual({ type: 'error', code: 'TW_WS_BAD_FRAME', message: expect.stringMatching(/^frame is not a JSON object: /) });
    c.ws.send('[1,2]');
    c.ws.send('null');
    await c.until((x) => x.frames.filter((f) => f.type === 'error').length >= 3, 5000, 'more error frames');
    expect(c.frames.filter((f) => f.type === 'error').map((f) => f.code)).toEqual(['TW_WS_BAD_FRAME', 'TW_WS_BAD_FRAME', 'TW_WS_BAD_FRAME']);
    expect(c.closeCode).toBeUndefined();
    expect(c.ws.readyState).toBe(c.ws.OPEN);

    const { tracer } = inProcessTracer(sc);
    await runDemoAgent(tracer, { user: 'alice' });
    await c.until((x) => x.events.length >= DEMO_EXPECTED.length, 5000, 'events');
    expect(c.events.map((e) => e.seq)).toEqual(DEMO_EXPECTED.map((_, i) => i + 1));
    expect(await metricValue(sc, 'tracewire_ws_client_errors_total', { code: 'TW_WS_BAD_FRAME' })).toBe(3);
  });

  it('an unknown frame type gets TW_WS_UNKNOWN_TYPE naming it; ping gets pong', async () => {
    sc = await startTestSidecar();
    const c = await connectAcked(sc, 'alice');
    c.ws.send(JSON.stringify({ type: 'subscribe', user: 'bob' }));
    await c.until((x) => x.frames.length >= 2, 5000, 'error frame');
    expect(c.frames[1]).toEqual({ type: 'error', code: 'TW_WS_UNKNOWN_TYPE', message: 'unknown frame type "subscribe"; expected resume, ack or ping' });
    c.ws.send(JSON.stringify({ type: 'ping' }));
    await c.until((x) => x.frames.length >= 3, 5000, 'pong');
    expect(c.frames[2]).toEqual({ type: 'pong' });
    expect(c.ws.readyState).toBe(c.ws.OPEN);
  });

  it('too many bad frames close the connection with 4400 TW_WS_TOO_MANY_BAD_FRAMES', async () => {
    sc = await startTestSidecar();
    const c = await connectAcked(sc, 'alice');
    for (let i = 0; i < 10; i++) c.ws.send('nope');
    await c.until((x) => x.closeCode !== undefined, 5000, 'close');
    expect(c.closeCode).toBe(4400);
    expect(c.closeReason).toBe('TW_WS_TOO_MANY_BAD_FRAMES');
    const errors = c.frames.filter((f) => f.type === 'error');
    expect(errors.map((f) => f.code)).toEqual([...Array(9).fill('TW_WS_BAD_FRAME'), 'TW_WS_TOO_MANY_BAD_FRAMES']);
  });
});
