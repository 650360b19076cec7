import { connect as netConnect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { DEMO_EXPECTED, runDemoAgent } from '../../src/demo/demoAgent.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connectAcked, inProcessTracer, metricValue, startTestSidecar, TestClient, until } from '../helpers.js';

/**
 * Liveness: the hub pings every wsHeartbeatMillis; a connection with no pong
 * by the next ping is terminated and counted as heartbeat_timeout. Clients
 * that answer pings (every ws/browser client does) stay connected.
 */

const HEARTBEAT = 100;

let sc: Sidecar | undefined;
const cleanup: Array<() => void> = [];
afterEach(async () => {
  for (const f of cleanup.splice(0)) f();
  await sc?.close();
  sc = undefined;
});

const timeouts = (s: Sidecar): Promise<number> => metricValue(s, 'tracewire_ws_disconnects_total', { reason: 'heartbeat_timeout' });

/** A real ws client that never answers pings (ws 8 `autoPong: false`). */
async function silentClient(s: Sidecar, user: string): Promise<TestClient & { pings: number }> {
  const token = await s.tw.token(user);
  const ws = new WebSocket(`${s.publicUrl.replace('http', 'ws')}/v1/events`, { headers: { authorization: `Bearer ${token}` }, autoPong: false });
  const c = new TestClient(ws) as TestClient & { pings: number };
  c.pings = 0;
  ws.on('ping', () => c.pings++);
  cleanup.push(() => ws.terminate());
  await c.until((x) => x.frames.some((f) => f.type === 'ack'), 5000, 'ack');
  return c;
}

/** A raw TCP peer that completes the WebSocket handshake and then goes silent (a dead or frozen client). */
async function frozenPeer(s: Sidecar, user: string): Promise<{ socket: Socket; ended: () => boolean }> {
  const token = await s.tw.token(user);
  const { port } = new URL(s.publicUrl);
  const socket = netConnect(Number(port), '127.0.0.1');
  cleanup.push(() => socket.destroy());
  let ended = false;
  let head = '';
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.once('connect', () => {
      socket.write(
        `GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer ${token}\r\n\r\n`,
      );
    });
    const onData = (chunk: Buffer): void => {
      head += chunk.toString('latin1');
      if (head.includes('\r\n\r\n')) {
        socket.off('data', onData);
        expect(head.startsWith('HTTP/1.1 101')).toBe(true);
        resolve();
      }
    };
    socket.on('data', onData);
  });
  // From here on it reads (so the kernel does not stall) but never answers anything.
  socket.on('data', () => undefined);
  socket.on('close', () => {
    ended = true;
  });
  socket.on('error', () => undefined);
  return { socket, ended: () => ended };
}

describe('heartbeat', () => {
  it('terminates a client that does not answer pings and counts it; a normal client stays and keeps receiving', async () => {
    sc = await startTestSidecar({ wsHeartbeatMillis: HEARTBEAT });
    const normal = await connectAcked(sc, 'alice');
    cleanup.push(() => normal.ws.terminate());
    const silent = await silentClient(sc, 'alice');
    const t0 = Date.now();
    expect(sc.tw.hub.connectionCount).toBe(2);

    await silent.until((c) => c.closeCode !== undefined, 3000, 'silent client closed');
    const took = Date.now() - t0;
    // Pinged at least once, cut one to two heartbeat intervals after its first unanswered ping (slack for a loaded machine).
    expect(silent.pings).toBeGreaterThanOrEqual(1);
    expect(took).toBeLessThan(HEARTBEAT * 10);
    // Best-effort close frame 4409 before the socket is terminated (a dead peer sees nothing, so 1006 is fine too).
    expect([4409, 1006]).toContain(silent.closeCode);
    expect(await timeouts(sc)).toBe(1);
    expect(sc.tw.hub.connectionCount).toBe(1);

    // Several heartbeat intervals later the answering client is still connected and still gets events.
    await new Promise((r) => setTimeout(r, HEARTBEAT * 5));
    expect(normal.closeCode).toBeUndefined();
    expect(sc.tw.hub.connectionCount).toBe(1);
    const { tracer } = inProcessTracer(sc);
    await runDemoAgent(tracer, { user: 'alice' });
    await normal.until((c) => c.events.length >= DEMO_EXPECTED.length, 5000, 'events');
    expect(await timeouts(sc)).toBe(1);
  });

  it('a client that reads but does not answer pings gets the error frame TW_WS_HEARTBEAT_TIMEOUT, then close 4409', async () => {
    sc = await startTestSidecar({ wsHeartbeatMillis: HEARTBEAT });
    const silent = await silentClient(sc, 'dora');
    await silent.until((c) => c.closeCode !== undefined, 3000, 'silent client closed');
    expect(silent.frames.slice(1)).toEqual([{ type: 'error', code: 'TW_WS_HEARTBEAT_TIMEOUT', message: `no pong within ${HEARTBEAT} ms` }]);
    expect(silent.closeCode).toBe(4409);
    expect(silent.closeReason).toBe('TW_WS_HEARTBEAT_TIMEOUT');
    expect(await timeouts(sc)).toBe(1);
  });

  it('terminates a frozen peer (handshake done, then silence) and frees its slot', async () => {
    sc = await startTestSidecar({ wsHeartbeatMillis: HEARTBEAT });
    const peer = await frozenPeer(sc, 'bob');
    await until(() => sc!.tw.hub.connectionCount === 1, 2000, 'peer registered');
    await until(() => peer.ended(), 3000, 'peer socket closed by the server');
    expect(await timeouts(sc)).toBe(1);
    expect(sc.tw.hub.connectionCount).toBe(0);
    expect(await metricValue(sc, 'tracewire_ws_connections')).toBe(0);
  });

  it('with wsHeartbeatMillis 0 never pings', async () => {
    sc = await startTestSidecar({ wsHeartbeatMillis: 0 });
    const silent = await silentClient(sc, 'carol');
    await new Promise((r) => setTimeout(r, 300));
    expect(silent.pings).toBe(0);
    expect(silent.closeCode).toBeUndefined();
    expect(await timeouts(sc)).toBe(0);
  });
});
