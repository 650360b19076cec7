import net from 'node:net';
import Fastify from 'fastify';
import WebSocket, { WebSocketServer } from 'ws';
import { afterEach, describe, expect, it } from 'vitest';
import { Tracewire } from '../../src/index.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connectAcked, startTestSidecar, TEST_SECRET } from '../helpers.js';

let sc: Sidecar | undefined;
afterEach(async () => {
  await sc?.close();
  sc = undefined;
});

const UPGRADE_HEADERS = 'Host: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n';

/** Send a raw upgrade request; resolves with the status line the server answered (or '' if it closed without one). */
function rawUpgrade(port: number, target: string): Promise<string> {
  return new Promise((resolve) => {
    let got = '';
    const s = net.connect(port, '127.0.0.1', () => s.write(`GET ${target} HTTP/1.1\r\n${UPGRADE_HEADERS}`));
    s.on('data', (d) => {
      got += d.toString('latin1');
      // An accepted upgrade stays open: its status line is enough.
      if (got.startsWith('HTTP/1.1 101')) s.destroy();
    });
    s.on('error', () => undefined);
    s.on('close', () => resolve(got.split('\r\n')[0] ?? ''));
  });
}

describe('upgrade requests the hub does not take', () => {
  it('a request-target no URL parser takes as a path gets an HTTP answer, and the sidecar keeps serving', async () => {
    sc = await startTestSidecar();
    const port = Number(new URL(sc.publicUrl).port);
    // `//x:99999/…` reads as a host with a bad port when parsed against a base URL.
    expect(await rawUpgrade(port, '//x:99999/v1/events')).toBe('HTTP/1.1 404 Not Found');
    expect(await rawUpgrade(port, '/other')).toBe('HTTP/1.1 404 Not Found');
    // Not a URL at all: refused as a bad request.
    expect(await rawUpgrade(port, 'http://[::1/v1/events')).toBe('HTTP/1.1 400 Bad Request');
    // The absolute form (RFC 9112) of the hub's path is the hub's.
    expect(await rawUpgrade(port, `http://127.0.0.1:${port}/v1/events?access_token=${await sc.tw.token('abe')}`)).toBe('HTTP/1.1 101 Switching Protocols');
    const c = await connectAcked(sc, 'alice');
    expect(c.frames[0]).toMatchObject({ type: 'ack', user: 'alice' });
    c.close();
  });

  it('peers that reset their connection right after an upgrade request to another path do not take the process down', async () => {
    sc = await startTestSidecar();
    const port = Number(new URL(sc.publicUrl).port);
    const resets: Array<Promise<void>> = [];
    for (let i = 0; i < 40; i++) {
      resets.push(
        new Promise((resolve) => {
          const s = net.connect(port, '127.0.0.1', () => {
            s.write(`GET /other HTTP/1.1\r\n${UPGRADE_HEADERS}`);
            // Reset before or after the server's answer (after it, the server's socket is still open, half-closed).
            if (i % 2 === 0) setTimeout(() => s.resetAndDestroy(), i % 4);
          });
          s.on('data', () => s.resetAndDestroy());
          s.on('error', () => undefined);
          s.on('close', () => resolve());
        }),
      );
      await new Promise((r) => setTimeout(r, 2));
    }
    await Promise.all(resets);
    await new Promise((r) => setTimeout(r, 100));
    const c = await connectAcked(sc, 'bob');
    expect(c.frames[0]).toMatchObject({ type: 'ack', user: 'bob' });
    expect((await fetch(`${sc.publicUrl}/healthz`)).status).toBe(200);
    c.close();
  });
});

describe('library mode: the app keeps its own WebSocket routes', () => {
  it('an upgrade to another path reaches the app\'s own WebSocket server; /v1/events stays tracewire\'s', async () => {
    const tw = new Tracewire({ jwtSecret: TEST_SECRET, wsHeartbeatMillis: 0 });
    const app = Fastify();
    const own = new WebSocketServer({ noServer: true });
    try {
      await app.register(tw.fastifyPlugin);
      app.server.on('upgrade', (req, socket, head) => {
        if (req.url !== '/app-ws') return;
        own.handleUpgrade(req, socket, head, (ws) => ws.send('hello from the app'));
      });
      await app.listen({ host: '127.0.0.1', port: 0 });
      const port = (app.server.address() as { port: number }).port;

      const appWs = new WebSocket(`ws://127.0.0.1:${port}/app-ws`);
      const first = await new Promise<string>((resolve, reject) => {
        appWs.once('message', (d) => resolve(d.toString()));
        appWs.once('error', reject);
      });
      expect(first).toBe('hello from the app');
      appWs.close();

      const twWs = new WebSocket(`ws://127.0.0.1:${port}/v1/events?access_token=${await tw.token('carol')}`);
      const ack = await new Promise<{ type: string; user: string }>((resolve, reject) => {
        twWs.once('message', (d) => resolve(JSON.parse(d.toString())));
        twWs.once('error', reject);
      });
      expect(ack).toMatchObject({ type: 'ack', user: 'carol' });
      twWs.close();
    } finally {
      own.close();
      await tw.close();
      await app.close();
    }
  });
});
