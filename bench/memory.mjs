// Figure 5: memory per in-flight run. Each variant runs in its own process
// (node --expose-gc), spawned by this script, so RSS figures are not mixed:
//
//  empty        an empty Node process (RSS, heap) for scale
//  map          a Map of 100k small objects (what "a small record per run" costs)
//  tw-noreplay  tracewire, replayMaxEventsPerRun 0: 100k runs, each with only its
//               top-level agent span started (never ended), the user connected
//               (a client in another process receives every agent_started)
//  tw-replay    the same with the default replay window (1000 events / 1 MiB per run)
//  tw-breakdown tw-noreplay with 10k runs between two heap snapshots: bytes per
//               run by object kind (what to slim when the target is missed)
//
// Per run = (heap after - heap before) / 100k, both after two forced GCs, with
// 1000 warm-up runs in flight already in "before". Span objects are not kept
// (the application's memory, not tracewire's); delivery objects are released
// before "after" (the client has received every frame). `external` counts
// Buffer memory (prebuilt frames) outside the JS heap.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import v8 from 'node:v8';
import { fileURLToPath } from 'node:url';
import { deadline, immediate, log, report, sleep } from './lib/common.mjs';

const N = Number(process.env.BENCH_MEM_RUNS ?? 100_000);
const WARM = 1000;
const variant = process.argv[2];

function mem() {
  globalThis.gc();
  globalThis.gc();
  const m = process.memoryUsage();
  return { rss: m.rss, heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers };
}

if (variant === undefined) {
  // Orchestrator: one child process per variant.
  deadline(180_000, 'memory');
  const self = fileURLToPath(import.meta.url);
  const out = {};
  for (const v of ['empty', 'map', 'tw-noreplay', 'tw-replay', 'tw-breakdown']) {
    const r = spawnSync(process.execPath, ['--expose-gc', self, v], { encoding: 'utf8', timeout: 120_000, stdio: ['ignore', 'pipe', 'inherit'] });
    const line = r.stdout.split('\n').find((l) => l.startsWith('RESULT '));
    if (!line) throw new Error(`memory variant ${v} failed (status ${r.status})`);
    out[v] = JSON.parse(line.slice(7));
  }
  report({ figure: 'memory', runs: N, ...out });
  process.exit(0);
}

deadline(110_000, `memory ${variant}`);
if (variant === 'empty') {
  await sleep(100);
  report(mem());
  process.exit(0);
}

if (variant === 'map') {
  const before = mem();
  const m = new Map();
  for (let i = 0; i < N; i++) m.set(`run-${i}`, { id: i, user: `u-${i % 100}`, startedAt: Date.now(), seq: 0 });
  const after = mem();
  report({ before, after, bytesPerEntry: (after.heapUsed - before.heapUsed) / N, size: m.size });
  process.exit(0);
}

const { BasicTracerProvider } = await import('@opentelemetry/sdk-trace-base');
const { ROOT_CONTEXT } = await import('@opentelemetry/api');
const { makeTracewire, startSidecar } = await import('./lib/tw.mjs');
const { ClientProcess } = await import('./lib/clientproc.mjs');

const tw = makeTracewire({
  jwtSecret: 'bench-secret-0123456789abcdef',
  wsHeartbeatMillis: 0,
  ...(variant !== 'tw-replay' ? { replayMaxEventsPerRun: 0 } : {}),
});
const sc = await startSidecar(tw, { host: '127.0.0.1', port: 0 }, undefined);
const clients = await ClientProcess.start();
const USER = 'mem-user';
await clients.open('c', 'tw', Number(new URL(sc.publicUrl).port), [{ path: '/v1/events', headers: { authorization: `Bearer ${await tw.token(USER)}` } }]);
const tracer = new BasicTracerProvider({ spanProcessors: [tw.spanProcessor()] }).getTracer('bench');

async function startRuns(from, n) {
  for (let i = 0; i < n; i++) {
    // Only the top-level agent span, started and never ended: the run stays in flight.
    tracer.startSpan('invoke_agent supervisor', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'supervisor', 'gen_ai.conversation.id': `c-${from + i}`, 'user.id': USER } }, ROOT_CONTEXT);
    if (i % 1000 === 999) await immediate(); // drain (the hook queue is bounded) and let writes complete
  }
  await immediate();
}

async function delivered(target) {
  for (let i = 0; i < 200; i++) {
    const { count } = await clients.count('c');
    if (count >= target) return count;
    await sleep(50);
  }
  return (await clients.count('c')).count;
}

await startRuns(0, WARM);
await delivered(WARM);
await sleep(100);
if (variant === 'tw-breakdown') {
  const { aggregate, diff } = await import('./lib/heapdiff.mjs');
  const n = 10_000;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tw-heap-'));
  try {
    mem();
    const a = v8.writeHeapSnapshot(path.join(dir, 'before.heapsnapshot'));
    await startRuns(WARM, n);
    await delivered(WARM + n);
    await sleep(100);
    mem();
    const b = v8.writeHeapSnapshot(path.join(dir, 'after.heapsnapshot'));
    const d = diff(aggregate(a), aggregate(b));
    const total = d.reduce((acc, x) => acc + x.size, 0);
    report({ runs: n, bytesPerRun: total / n, top: d.slice(0, 12).map((x) => ({ kind: x.key, bytesPerRun: x.size / n, objectsPerRun: x.count / n })) });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  await clients.stop();
  await sc.close();
  process.exit(0);
}
const before = mem();
const t0 = Date.now();
await startRuns(WARM, N);
const got = await delivered(WARM + N);
await sleep(100);
await immediate();
const after = mem();
const inFlight = tw.ledger.inFlightCount;
const stats = tw.hub.stats();
const res = {
  before,
  after,
  seconds: (Date.now() - t0) / 1000,
  delivered: got,
  inFlight,
  replayRuns: stats.replayRuns,
  held: stats.held,
  heapBytesPerRun: (after.heapUsed - before.heapUsed) / N,
  heapPlusExternalBytesPerRun: (after.heapUsed + after.external - before.heapUsed - before.external) / N,
};
log(`[memory] ${variant}: ${res.heapBytesPerRun.toFixed(0)} B/run heap, ${res.heapPlusExternalBytesPerRun.toFixed(0)} B/run heap+external, in flight ${inFlight}, rss ${(after.rss / 2 ** 20).toFixed(0)} MiB`);
report(res);
await clients.stop();
await sc.close();
process.exit(0);
