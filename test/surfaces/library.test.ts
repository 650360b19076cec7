import { trace } from '@opentelemetry/api';
import { NodeSDK } from '@opentelemetry/sdk-node';
import Fastify from 'fastify';
import WebSocket from 'ws';
import { afterAll, describe, expect, it } from 'vitest';
import { DEMO_EXPECTED, runDemoAgent } from '../../src/demo/demoAgent.js';
import { Tracewire } from '../../src/index.js';
import { TEST_SECRET } from '../helpers.js';

describe('library use in a Node agent app', () => {
  const tw = new Tracewire({ jwtSecret: TEST_SECRET, graceMillis: 50, wsHeartbeatMillis: 0 });
  const sdk = new NodeSDK({ spanProcessors: [tw.spanProcessor()], instrumentations: [] });
  const app = Fastify();
  afterAll(async () => {
    await sdk.shutdown();
    await tw.close();
    await app.close();
  });

  it('streams runs of NodeSDK-traced agent code to the fastify app\'s WebSocket, with no emit call', async () => {
    sdk.start();
    await app.register(tw.fastifyPlugin);
    app.post('/chat', async (req) => {
      // The app's own handler: plain agent code, traced with the global tracer.
      const { user } = req.body as { user: string };
      await runDemoAgent(trace.getTracer('agent-app'), { user });
      return { ok: true };
    });
    await app.listen({ host: '127.0.0.1', port: 0 });
    const port = (app.server.address() as { port: number }).port;

    const token = await tw.token('erin');
    const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/events?access_token=${token}`);
    const frames: Array<{ type: string; seq?: number }> = [];
    ws.on('message', (d) => frames.push(JSON.parse(d.toString())));
    await new Promise<void>((r) => ws.once('message', () => r()));
    expect(frames[0]).toMatchObject({ type: 'ack', user: 'erin', protocol: 'tracewire.v1' });

    const res = await fetch(`http://127.0.0.1:${port}/chat`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ user: 'erin' }) });
    expect(res.status).toBe(200);
    const deadline = Date.now() + 5000;
    while (frames.length < DEMO_EXPECTED.length + 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    const events = frames.slice(1);
    expect(events.map((f) => f.type)).toEqual(DEMO_EXPECTED.map((e) => e.type));
    expect(events.map((f) => f.seq)).toEqual(DEMO_EXPECTED.map((_, i) => i + 1));
    ws.close();
  });
});

/** A non-loopback IPv4 address of this machine, if it has one. */
const external = Object.values((await import('node:os')).networkInterfaces())
  .flat()
  .find((a) => a !== undefined && a.family === 'IPv4' && !a.internal)?.address;

describe('library use with no jwtSecret (the built-in dev secret)', () => {
  it.skipIf(external === undefined)('takes WebSocket connections on loopback only, whatever interface the app listens on', async () => {
    const tw = new Tracewire({ wsHeartbeatMillis: 0, logLevel: 'silent' });
    const app = Fastify();
    try {
      await app.register(tw.fastifyPlugin);
      await app.listen({ host: '0.0.0.0', port: 0 });
      const port = (app.server.address() as { port: number }).port;
      const token = await tw.token('mallory-target');
      // Anyone can sign this token: the dev secret is in the source.
      const open = (host: string): Promise<{ ack?: string; status?: number }> =>
        new Promise((resolve) => {
          const ws = new WebSocket(`ws://${host}:${port}/v1/events?access_token=${token}`);
          ws.once('message', (d) => {
            resolve({ ack: (JSON.parse(d.toString()) as { type: string }).type });
            ws.close();
          });
          ws.once('unexpected-response', (_req, res) => resolve({ status: res.statusCode }));
          ws.once('error', () => undefined);
        });
      expect(await open('127.0.0.1')).toEqual({ ack: 'ack' });
      expect(await open(external!)).toEqual({ status: 500 });
      const attempts = await tw.metrics.registry.getSingleMetric('tracewire_ws_connection_attempts_total')!.get();
      expect(attempts.values.find((v) => v.labels.result === 'TW_CONFIG_INVALID')?.value).toBe(1);
    } finally {
      await tw.close();
      await app.close();
    }
  });
});
