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
