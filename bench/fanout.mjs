// Figure 3: fan-out throughput. One server process (this one, one
// implementation per process: `--impl tw-spans|tw-publish|ws|sio`) sends the
// same events to 100 clients of one user / room, as fast as the clients take
// them; the clients (raw WebSocket connections in a forked process on the other
// core) count the frames they receive. Reported: deliveries counted at the
// clients per wall second, the server process's CPU seconds
// (process.cpuUsage) over the same window, and deliveries per CPU second
// ("per core": the server is single-threaded).
//
//  tw-spans    tracewire end to end: run-shaped spans through the in-process
//              SpanProcessor -> bridge -> hub -> 100 connections of the user
//  tw-publish  tracewire's sink only: tw.hub.publish(OutboundEvent) with events
//              made like BridgeRegistry.emit makes them
//  ws          plain `ws` server: for each message, ws.send(payload) per client
//  sio         Socket.IO 4.8: io.to(room).emit('event', object), websocket transport
//
// Flow control: the producer adds a batch of 10 events per event-loop turn
// while every connection has under 256 KiB unsent, else waits 1 ms (so an idle
// server does not spin). Payloads are tracewire.v1 events of the same size.
import { BasicTracerProvider } from '@opentelemetry/sdk-trace-base';
import http from 'node:http';
import { Server as SioServer } from 'socket.io';
import { WebSocketServer } from 'ws';
import { makeTracewire, OutboundEvent, RunRecord, startSidecar } from './lib/tw.mjs';
import { EVENTS_PER_RUN, runOnce } from './lib/agentRuns.mjs';
import { ClientProcess } from './lib/clientproc.mjs';
import { cpuSeconds, deadline, log, nowNs, report, sleep } from './lib/common.mjs';

deadline(90_000, 'fanout');
const impl = process.argv[process.argv.indexOf('--impl') + 1];
const quick = process.env.BENCH_QUICK === '1';
const WARMUP_MS = quick ? 700 : 1500;
const MEASURE_MS = quick ? 1500 : 4000;
const CLIENTS = 100;
const BATCH = 10; // events per producer turn
const HIGH = 256 * 1024;
const SECRET = 'bench-secret-0123456789abcdef';
const USER = 'fan-user';

const hex = (n, len) => n.toString(16).padStart(len, '0').slice(-len);
/** A tracewire.v1 event object (same fields and sizes as the bridge's). */
function eventObj(run, seq) {
  const traceId = hex(0xabc0000 + run, 32);
  const spanId = hex(0x1000 + run * 8 + seq, 16);
  const types = ['agent_started', 'agent_thinking', 'tool_executing', 'tool_completed', 'agent_completed'];
  const datas = [
    { agent: 'supervisor' },
    { model: 'gpt-4o' },
    { tool: 'search_docs', call_id: 'call_1' },
    { tool: 'search_docs', call_id: 'call_1', status: 'ok', duration_ms: 0.123 },
    { agent: 'supervisor', status: 'ok', duration_ms: 1.234 },
  ];
  return {
    type: types[seq - 1],
    run_id: `${traceId}-${hex(0x1000 + run * 8, 16)}`,
    trace_id: traceId,
    span_id: spanId,
    seq,
    ts: new Date().toISOString(),
    agent: 'supervisor',
    conversation_id: `c-${USER}`,
    data: datas[seq - 1],
  };
}
const POOL_RUNS = 1000;
const pool = [];
for (let r = 0; r < POOL_RUNS; r++) for (let s = 1; s <= EVENTS_PER_RUN; s++) pool.push(eventObj(r, s));
const poolText = pool.map((o) => JSON.stringify(o));

const clients = await ClientProcess.start();
let produce; // (n events) => void
let backlog; // () => max unsent bytes over the connections
let closeServer;
let produced = 0;

if (impl === 'tw-spans' || impl === 'tw-publish') {
  const tw = makeTracewire({ jwtSecret: SECRET, wsHeartbeatMillis: 0 });
  const sc = await startSidecar(tw, { host: '127.0.0.1', port: 0 }, undefined);
  const token = await tw.token(USER);
  const conns = Array.from({ length: CLIENTS }, () => ({ path: '/v1/events', headers: { authorization: `Bearer ${token}` } }));
  await clients.open('c', 'tw', Number(new URL(sc.publicUrl).port), conns);
  const hubConns = tw.hub.all; // private field, read-only use: unsent bytes per connection
  if (hubConns === undefined || typeof hubConns[Symbol.iterator] !== 'function') throw new Error('EventHub.all (the connection set) is gone: update the flow control of bench/fanout.mjs');
  backlog = () => {
    let m = 0;
    for (const c of hubConns) m = Math.max(m, c.bufferedBytes);
    return m;
  };
  if (impl === 'tw-spans') {
    const tracer = new BasicTracerProvider({ spanProcessors: [tw.spanProcessor()] }).getTracer('bench');
    produce = (n) => {
      for (let i = 0; i < n; i += EVENTS_PER_RUN) runOnce(tracer, USER, `c-${USER}`);
    };
  } else {
    // Events made like BridgeRegistry.emit: a RunRecord per run, an EventRecord per event, the `data` JSON
    // built once per event (the hub writes the envelope when it first sends the event).
    let run = 0;
    let rec;
    let seq = 0;
    let runId;
    let span; // the span summary the run's events are about (the bridge passes its span node)
    produce = (n) => {
      for (let i = 0; i < n; i++) {
        if (seq === 0) {
          run++;
          runId = `run-${run}`;
          rec = new RunRecord(runId, `trace-${run}`, `span-${run}`, 'supervisor', Date.now(), Date.now());
          rec.user = USER;
          span = { spanId: `span-${run}`, parentSpanId: undefined, kind: 'agent', name: 'supervisor', startMs: Date.now(), endMs: undefined };
        }
        seq++;
        const o = pool[(run % POOL_RUNS) * EVENTS_PER_RUN + seq - 1];
        const data = JSON.stringify(o.data);
        const evRec = rec.addEvent(seq, o.type, span);
        tw.hub.publish(new OutboundEvent(`c-${USER}`, evRec, performance.now(), o.agent ?? undefined, data));
        if (seq === EVENTS_PER_RUN) {
          tw.hub.runEnded(runId);
          seq = 0;
        }
      }
    };
  }
  closeServer = () => sc.close();
} else if (impl === 'ws') {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
  await new Promise((r) => wss.once('listening', r));
  const list = [];
  wss.on('connection', (ws) => list.push(ws));
  await clients.open('c', 'ws', wss.address().port, Array.from({ length: CLIENTS }, () => ({ path: '/' })));
  let k = 0;
  produce = (n) => {
    for (let i = 0; i < n; i++) {
      const payload = poolText[k++ % poolText.length];
      for (const ws of list) ws.send(payload);
    }
  };
  backlog = () => {
    let m = 0;
    for (const ws of list) m = Math.max(m, ws.bufferedAmount);
    return m;
  };
  closeServer = () => new Promise((r) => wss.close(() => r()));
} else if (impl === 'sio') {
  const server = http.createServer();
  const io = new SioServer(server, { transports: ['websocket'], perMessageDeflate: false, pingInterval: 120_000, pingTimeout: 60_000, serveClient: false });
  io.on('connection', (s) => s.join('room'));
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  await clients.open('c', 'sio', server.address().port, Array.from({ length: CLIENTS }, () => ({ path: '/socket.io/?EIO=4&transport=websocket' })));
  await sleep(50);
  let k = 0;
  const nsp = io.of('/');
  produce = (n) => {
    for (let i = 0; i < n; i++) io.to('room').emit('event', pool[k++ % pool.length]);
  };
  backlog = () => {
    let m = 0;
    for (const s of nsp.sockets.values()) {
      const ws = s.conn.transport.socket;
      m = Math.max(m, (ws?.bufferedAmount ?? 0) + s.conn.writeBuffer.length * 300);
    }
    return m;
  };
  closeServer = () => new Promise((r) => io.close(() => r()));
} else {
  throw new Error(`unknown --impl ${impl}`);
}

// ---- producer ----------------------------------------------------------------
let stopped = false;
let throttled = 0;
function loop() {
  if (stopped) return;
  if (backlog() < HIGH) {
    produce(BATCH);
    produced += BATCH;
    setImmediate(loop);
  } else {
    throttled++;
    setTimeout(loop, 1);
  }
}
loop();
await sleep(WARMUP_MS);
const c0 = (await clients.count('c')).count;
const cpu0 = cpuSeconds();
const t0 = nowNs();
const p0 = produced;
await sleep(MEASURE_MS);
const c1r = await clients.count('c');
const cpu1 = cpuSeconds();
const t1 = nowNs();
const p1 = produced;
stopped = true;

const deliveries = c1r.count - c0;
const wall = (t1 - t0) / 1e9;
const cpu = cpu1 - cpu0;
const result = {
  figure: 'fanout',
  impl,
  clients: CLIENTS,
  batch: BATCH,
  deliveries,
  wallSeconds: wall,
  serverCpuSeconds: cpu,
  deliveriesPerSec: deliveries / wall,
  deliveriesPerCpuSec: deliveries / cpu,
  serverCpuUtil: cpu / wall,
  eventsProduced: p1 - p0,
  throttledTurns: throttled,
  closedConnections: c1r.closed,
};
log(`[fanout] ${impl.padEnd(10)} ${Math.round(result.deliveriesPerSec).toLocaleString()} deliveries/s wall, ${Math.round(result.deliveriesPerCpuSec).toLocaleString()} per CPU-s (cpu ${(100 * result.serverCpuUtil).toFixed(0)}%), closed=${c1r.closed}`);
report(result);
await sleep(200);
await clients.stop();
await closeServer();
process.exit(0);
