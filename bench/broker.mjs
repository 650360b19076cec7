// Figure 6: fan-out across sidecars. The same run-shaped spans (in-process
// SpanProcessor, 5 events a run) go to 10 users with one connection each,
// held by a client process on the other core:
//
//  local   one sidecar (this process) holds the connections: the baseline
//  broker  this process is the origin; the connections are on an edge sidecar
//          in another process (bench/lib/edgeproc.mjs); events go through a
//          real redis-server (unix socket), outcomes come back the same way
//
// Reported: events delivered (counted at the clients) per CPU second of every
// server-side process (local: the sidecar; broker: origin + edge + redis-server,
// read from /proc), and per wall second. Flow control: the producer adds a batch
// of runs per event-loop turn while the connections' unsent bytes (local) or the
// origin's deliveries awaiting their outcome (broker) stay under a bound.
import { fork, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BasicTracerProvider } from '@opentelemetry/sdk-trace-base';
import { makeTracewire, startSidecar } from './lib/tw.mjs';
import { EVENTS_PER_RUN, runOnce } from './lib/agentRuns.mjs';
import { ClientProcess } from './lib/clientproc.mjs';
import { cpuSeconds, deadline, log, nowNs, report, sleep } from './lib/common.mjs';

deadline(90_000, 'broker');
const impl = process.argv[process.argv.indexOf('--impl') + 1];
const quick = process.env.BENCH_QUICK === '1';
const WARMUP_MS = quick ? 700 : 1500;
const MEASURE_MS = quick ? 1500 : 4000;
const USERS = 10;
const RUNS_PER_TURN = 4;
const HIGH_BYTES = 256 * 1024;
const HIGH_PENDING = 4000;
const SECRET = 'bench-secret-0123456789abcdef';
const users = Array.from({ length: USERS }, (_, i) => `broker-user-${i}`);

/** CPU seconds (user + system) of another process, from /proc (clock ticks of 10 ms). */
function procCpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

const clients = await ClientProcess.start();
const cleanups = [];
let port;
let pressure; // () => true while the producer should wait
let others = []; // pids of the other server-side processes

const tw = makeTracewire({ jwtSecret: SECRET, wsHeartbeatMillis: 0, logLevel: 'warn', ...(impl === 'broker' ? {} : {}) });
if (impl === 'local') {
  const sc = await startSidecar(tw, { host: '127.0.0.1', port: 0 }, undefined);
  cleanups.push(() => sc.close());
  port = Number(new URL(sc.publicUrl).port);
  const conns = tw.hub.all; // private, read-only: unsent bytes per connection
  pressure = () => {
    for (const c of conns) if (c.bufferedBytes > HIGH_BYTES) return true;
    return false;
  };
} else if (impl === 'broker') {
  const redisBin = ['/usr/bin/redis-server', '/usr/local/bin/redis-server'].find((p) => existsSync(p));
  if (redisBin === undefined) throw new Error('redis-server is not installed (apt-get install redis-server)');
  const dir = mkdtempSync(join(tmpdir(), 'tw-bench-redis-'));
  const socket = join(dir, 'redis.sock');
  const redis = spawn(redisBin, ['--port', '0', '--unixsocket', socket, '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' });
  cleanups.push(() => {
    redis.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  while (!existsSync(socket)) await sleep(10);
  const brokerUrl = `unix://${socket}`;
  const edge = fork(fileURLToPath(new URL('./lib/edgeproc.mjs', import.meta.url)), [JSON.stringify({ brokerUrl, prefix: 'bench', secret: SECRET })], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  cleanups.push(() => edge.kill('SIGKILL'));
  port = await new Promise((resolve, reject) => {
    edge.once('message', (m) => resolve(m.port));
    edge.once('exit', (code) => reject(new Error(`edge exited (${code})`)));
  });
  // The origin is this process's instance, on the same broker.
  const origin = makeTracewire({ jwtSecret: SECRET, wsHeartbeatMillis: 0, logLevel: 'warn', brokerUrl, brokerPrefix: 'bench', instanceId: 'origin' });
  await origin.fanoutReady;
  cleanups.push(() => origin.close(1000));
  Object.assign(tw, { __origin: origin });
  others = [edge.pid, redis.pid];
  const fanout = origin.hub.fanout; // private, read-only: deliveries awaiting their outcome
  pressure = () => fanout.pending.size > HIGH_PENDING;
} else throw new Error(`unknown --impl ${impl}`);

const producer = impl === 'broker' ? tw.__origin : tw;
const tokens = await Promise.all(users.map((u) => producer.token(u)));
await clients.open('c', 'tw', port, tokens.map((t) => ({ path: '/v1/events', headers: { authorization: `Bearer ${t}` } })));
if (impl === 'broker') {
  // Wait until the origin has heard of every user on the edge.
  const deadlineAt = Date.now() + 10_000;
  while (producer.hub.fanout.remoteEntries < USERS) {
    if (Date.now() > deadlineAt) throw new Error('the origin never heard of the edge users');
    await sleep(20);
  }
}
const tracer = new BasicTracerProvider({ spanProcessors: [producer.spanProcessor()] }).getTracer('bench');

let stopped = false;
let produced = 0;
let throttled = 0;
let k = 0;
function loop() {
  if (stopped) return;
  if (!pressure()) {
    for (let i = 0; i < RUNS_PER_TURN; i++) {
      const u = users[k++ % USERS];
      runOnce(tracer, u, `c-${u}`);
    }
    produced += RUNS_PER_TURN * EVENTS_PER_RUN;
    setImmediate(loop);
  } else {
    throttled++;
    setTimeout(loop, 1);
  }
}
loop();
const othersCpu = () => others.reduce((a, pid) => a + procCpuSeconds(pid), 0);
await sleep(WARMUP_MS);
const c0 = (await clients.count('c')).count;
const cpu0 = cpuSeconds();
const o0 = othersCpu();
const t0 = nowNs();
await sleep(MEASURE_MS);
const c1 = await clients.count('c');
const cpu1 = cpuSeconds();
const o1 = othersCpu();
const t1 = nowNs();
stopped = true;

const deliveries = c1.count - c0;
const wall = (t1 - t0) / 1e9;
const cpu = cpu1 - cpu0 + (o1 - o0);
const result = {
  figure: 'broker',
  impl,
  users: USERS,
  deliveries,
  wallSeconds: wall,
  serverCpuSeconds: cpu,
  originCpuSeconds: cpu1 - cpu0,
  otherCpuSeconds: o1 - o0,
  deliveriesPerSec: deliveries / wall,
  deliveriesPerCpuSec: deliveries / cpu,
  throttledTurns: throttled,
  closedConnections: c1.closed,
};
log(`[broker] ${impl.padEnd(6)} ${Math.round(result.deliveriesPerSec).toLocaleString()} events/s wall, ${Math.round(result.deliveriesPerCpuSec).toLocaleString()} per CPU-s (this process ${(cpu1 - cpu0).toFixed(2)} s, others ${(o1 - o0).toFixed(2)} s), closed=${c1.closed}`);
report(result);
await sleep(200);
await clients.stop();
for (const f of cleanups.reverse()) await f();
process.exit(0);
