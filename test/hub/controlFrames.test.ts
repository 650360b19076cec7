import type { Socket } from 'node:net';
import { context, trace } from '@opentelemetry/api';
import { afterEach, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connectAcked, inProcessTracer, metricValue, startTestSidecar, until, type Frame, type TestClient } from '../helpers.js';

/**
 * What the hub writes besides events (error frames that do not close, pongs)
 * is bounded like events: a resume gets one error frame for all the runs it
 * cannot resume, and control frames count against wsMaxBufferedBytes, so a
 * client that keeps sending but stops reading is closed (4408) instead of
 * growing the server's memory. A client frame over 64 KiB is answered with
 * TW_WS_FRAME_TOO_LARGE before the 1009 close, and counted.
 */

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

const errorsOf = (c: TestClient): Frame[] => c.frames.filter((f) => f.type === 'error');
/** The client's own TCP socket: pausing it makes a client that still sends but no longer reads. */
const socketOf = (c: TestClient): Socket => (c.ws as unknown as { _socket: Socket })._socket;

describe('error frames for a resume', () => {
  it('a resume frame naming 1,000 unknown runs gets one error frame (the count and the first ten), not 1,000; over 1,000 runs is a bad field', async () => {
    sc = await startTestSidecar();
    const c = track(await connectAcked(sc, 'alice'));
    const runs = Object.fromEntries(Array.from({ length: 1000 }, (_, i) => [`r${i}`, 0]));
    const frame = JSON.stringify({ type: 'resume', runs });
    for (let i = 0; i < 20; i++) c.ws.send(frame);
    c.ws.send(JSON.stringify({ type: 'ping' }));
    await c.until((x) => x.frames.some((f) => f.type === 'pong'), 5000, 'pong');

    const first = Array.from({ length: 10 }, (_, i) => `r${i}`).join(', ');
    expect(errorsOf(c)).toEqual(Array(20).fill({ type: 'error', code: 'TW_WS_BAD_FIELD', message: `bad field runs: 1000 runs unknown or outside the resume window: ${first}, …` }));
    // The answer is a small fraction of the question: a client cannot make the hub write more than it sends.
    const answered = c.texts.filter((t) => t.startsWith('{"type":"error"')).reduce((n, t) => n + Buffer.byteLength(t), 0);
    expect(answered).toBeLessThan((20 * frame.length) / 50);
    // Not bad frames: naming runs that expired is what reconnecting clients do.
    expect(await metricValue(sc, 'tracewire_ws_client_errors_total')).toBe(0);

    // More than 1000 runs in one frame: refused as a bad field (counted), nothing resumed.
    c.ws.send(JSON.stringify({ type: 'resume', runs: { ...runs, r1000: 0 } }));
    await c.until((x) => errorsOf(x).length >= 21, 5000, 'error for 1001 runs');
    expect(errorsOf(c)[20]).toEqual({ type: 'error', code: 'TW_WS_BAD_FIELD', message: 'bad field runs: names 1001 runs, at most 1000 per resume frame; send several frames' });
    expect(await metricValue(sc, 'tracewire_ws_client_errors_total', { code: 'TW_WS_BAD_FIELD' })).toBe(1);
    expect(c.closeCode).toBeUndefined();
  });

  it('one unknown run keeps its own message; bad ?resume= parts get one error frame', async () => {
    sc = await startTestSidecar();
    const c = track(await connectAcked(sc, 'bob', 'resume=gone:3,x,y:z,:4'));
    await c.until((x) => errorsOf(x).length >= 2, 5000, 'errors');
    c.ws.send(JSON.stringify({ type: 'ping' }));
    await c.until((x) => x.frames.some((f) => f.type === 'pong'), 5000, 'pong');
    expect(errorsOf(c).map((e) => e.message)).toEqual(['bad field resume: 3 parts are not <run_id>:<seq>: "x", "y:z", ":4"', 'bad field runs.gone: run unknown or outside the resume window']);
  });
});

describe('control frames count against wsMaxBufferedBytes', () => {
  it('a client that keeps sending pings but stops reading is closed with 4408 once its pongs reach the budget', async () => {
    const budget = 256 * 1024;
    // A long close grace: the client below reads its close frame only after it has read its backlog.
    sc = await startTestSidecar({ wsMaxBufferedBytes: budget, wsCloseGraceMillis: 10_000 });
    const c = track(await connectAcked(sc, 'carol'));
    socketOf(c).pause();

    // Events of ~4 KiB until the kernel's buffers are full and half the budget is queued in the hub.
    const { tracer } = inProcessTracer(sc);
    const top = tracer.startSpan('invoke_agent planner', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'planner', 'user.id': 'carol' } });
    const ctx = trace.setSpan(context.active(), top);
    const callId = 'c'.repeat(4000);
    let tools = 0;
    while (sc.tw.hub.stats().queuedBytes < budget / 2) {
      tracer.startSpan('execute_tool lookup', { attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'lookup', 'gen_ai.tool.call.id': `${callId}${tools++}` } }, ctx).end();
      await new Promise((r) => setImmediate(r));
      if (tools > 20_000) throw new Error('the client socket never filled up');
    }
    // The events alone stay within the budget: the connection is open.
    expect(sc.tw.hub.connectionCount).toBe(1);

    // 20,000 pings (340 KB of pongs): past the budget, the hub closes the connection instead of queueing more.
    for (let i = 0; i < 20_000; i++) c.ws.send('{"type":"ping"}');
    await until(() => sc!.tw.hub.connectionCount === 0, 10_000, 'connection closed for backpressure');
    expect(await metricValue(sc, 'tracewire_ws_disconnects_total', { reason: 'backpressure' })).toBe(1);
    expect(sc.tw.hub.stats().queuedBytes).toBe(0);

    // Reading again, the client gets what was in flight, then the reason and 4408.
    socketOf(c).resume();
    await c.until((x) => x.closeCode !== undefined, 10_000, 'close');
    expect(c.closeCode).toBe(4408);
    expect(c.frames.at(-1)).toMatchObject({ type: 'error', code: 'TW_WS_BACKPRESSURE' });
    expect(c.frames.filter((f) => f.type === 'pong').length).toBeLessThan(20_000);
    top.end();
  });
});

describe('client frames over 64 KiB', () => {
  it('get the error frame TW_WS_FRAME_TOO_LARGE, then close 1009; counted as a client error and a bad_frames disconnect, not abnormal', async () => {
    sc = await startTestSidecar();
    const c = track(await connectAcked(sc, 'dora'));
    c.ws.send(JSON.stringify({ type: 'ping', pad: 'x'.repeat(100 * 1024) }));
    await c.until((x) => x.closeCode !== undefined, 5000, 'close');
    expect(c.frames.slice(1)).toEqual([{ type: 'error', code: 'TW_WS_FRAME_TOO_LARGE', message: 'client frame over 65536 bytes' }]);
    expect(c.closeCode).toBe(1009);
    expect(c.closeReason).toBe('TW_WS_FRAME_TOO_LARGE');
    expect(await metricValue(sc, 'tracewire_ws_client_errors_total', { code: 'TW_WS_FRAME_TOO_LARGE' })).toBe(1);
    await until(() => sc!.tw.hub.connectionCount === 0, 5000, 'connection forgotten');
    expect(await metricValue(sc, 'tracewire_ws_disconnects_total', { reason: 'bad_frames' })).toBe(1);
    expect(await metricValue(sc, 'tracewire_ws_disconnects_total', { reason: 'abnormal' })).toBe(0);

    // A frame of exactly 64 KiB is still taken.
    const d = track(await connectAcked(sc, 'dora'));
    const fill = 64 * 1024 - JSON.stringify({ type: 'ping', pad: '' }).length;
    d.ws.send(JSON.stringify({ type: 'ping', pad: 'x'.repeat(fill) }));
    await d.until((x) => x.frames.some((f) => f.type === 'pong'), 5000, 'pong');
    expect(d.closeCode).toBeUndefined();
  });
});
