// Figure 4: OTLP ingest end to end, HTTP into the bridge. This server
// process runs the tracewire sidecar's OTLP listener (POST /v1/traces) and,
// beside it, the baseline: an HTTP floor, a bare fastify route with the same
// raw-body content-type parsers that answers 200 without decoding anything.
// A forked load process (bench/otlpclient.mjs) sends pre-built protobuf and
// JSON bodies of 8 and 512 spans over 4 keep-alive connections.
//
// Counted: spans accepted by the server (tracewire_otlp_spans_received_total)
// per wall second and per CPU second of the server process. Also, in process
// and without HTTP: decode only, decode + bridge, and decode + bridge with no
// hold for absent users, per core, to show where the time goes; and protobuf
// 512 sustained for 40 s, the tables at their bounds for the last 10 s or more.
import Fastify from 'fastify';
import { fileURLToPath } from 'node:url';
import { distUrl, makeTracewire, startSidecar } from './lib/tw.mjs';
import { ClientProcess } from './lib/clientproc.mjs';
import { cpuSeconds, deadline, ingest, log, nowNs, report, sleep } from './lib/common.mjs';
import { buildBody, stamp } from './lib/otlpBodies.mjs';

deadline(300_000, 'otlp');
const quick = process.env.BENCH_QUICK === '1';
const WARMUP_MS = quick ? 500 : 1000;
const MEASURE_MS = quick ? 1500 : 2000;
// Each case runs ROUNDS times, alternating tracewire and the floor; the figure is each one's median
// round (by spans per CPU second): one round on a shared 2-vCPU machine moves by ±20%.
const ROUNDS = quick ? 1 : 3;
const CONCURRENCY = 4;
const SECRET = 'bench-secret-0123456789abcdef';
const CASES = [
  ['protobuf', 8],
  ['protobuf', 512],
  ['json', 8],
  ['json', 512],
];

// A fresh sidecar per tracewire round, so no round inherits the state (traces kept
// for late spans, held events, replay window) of the one before.
let tw;
let sc;
let otlpPort;
async function freshSidecar() {
  if (sc !== undefined) await sc.close();
  tw = makeTracewire({ jwtSecret: SECRET, wsHeartbeatMillis: 0 });
  sc = await startSidecar(tw, { host: '127.0.0.1', port: 0 }, { host: '127.0.0.1', port: 0 });
  otlpPort = Number(new URL(sc.otlpUrl).port);
}
await freshSidecar();

// The HTTP floor: same framework, same raw-body parsers, no decoding, no bridge.
const floor = Fastify({ logger: false, bodyLimit: 8 * 1024 * 1024 });
floor.removeAllContentTypeParsers();
const raw = (_req, body, done) => done(null, body);
floor.addContentTypeParser('application/x-protobuf', { parseAs: 'buffer' }, raw);
floor.addContentTypeParser('application/json', { parseAs: 'buffer' }, raw);
let floorRequests = 0;
floor.post('/v1/traces', async (req, reply) => {
  floorRequests++;
  if (req.headers['content-type'] === 'application/json') return reply.header('content-type', 'application/json').send('{}');
  return reply.header('content-type', 'application/x-protobuf').send(Buffer.alloc(0));
});
await floor.listen({ host: '127.0.0.1', port: 0 });
const floorPort = floor.server.address().port;

async function acceptedSpans() {
  const m = await tw.metrics.otlpSpans.counter.get();
  return m.values.reduce((a, v) => a + v.value, 0);
}

// Is the receiver there? (It was a placeholder while this benchmark was written.)
const probe = buildBody('protobuf', 8);
const probeRes = await fetch(`${sc.otlpUrl}/v1/traces`, { method: 'POST', headers: { 'content-type': probe.contentType }, body: probe.body });
const probeJson = buildBody('json', 8);
const probeResJ = await fetch(`${sc.otlpUrl}/v1/traces`, { method: 'POST', headers: { 'content-type': probeJson.contentType }, body: probeJson.body });
if (probeRes.status !== 200 || probeResJ.status !== 200) {
  log(`[otlp] the OTLP receiver answers ${probeRes.status}/${probeResJ.status}: not measurable`);
  report({ figure: 'otlp', available: false, status: [probeRes.status, probeResJ.status] });
  await sc.close();
  await floor.close();
  process.exit(0);
}

const client = await ClientProcess.start(fileURLToPath(new URL('./otlpclient.mjs', import.meta.url)));
await client.request({ cmd: 'build', bodies: CASES });

async function phase(impl, encoding, spans) {
  const port = impl === 'tracewire' ? otlpPort : floorPort;
  const count = impl === 'tracewire' ? acceptedSpans : async () => floorRequests * spans;
  // What earlier phases left (a closed sidecar's heap) is collected before, not during, this one.
  globalThis.gc?.();
  const { bodyBytes } = await client.request({ cmd: 'run', port, path: '/v1/traces', encoding, spans, concurrency: CONCURRENCY });
  await sleep(WARMUP_MS);
  const n0 = await count();
  const cpu0 = cpuSeconds();
  const t0 = nowNs();
  await sleep(MEASURE_MS);
  const n1 = await count();
  const cpu1 = cpuSeconds();
  const t1 = nowNs();
  const { statuses } = await client.request({ cmd: 'stop' });
  await sleep(300);
  const wall = (t1 - t0) / 1e9;
  const cpu = cpu1 - cpu0;
  const r = { impl, encoding, spans, bodyBytes, accepted: n1 - n0, spansPerSec: (n1 - n0) / wall, spansPerCpuSec: (n1 - n0) / cpu, serverCpuUtil: cpu / wall, statuses, rssMiB: process.memoryUsage().rss / 2 ** 20 };
  log(`[otlp] ${impl.padEnd(9)} ${encoding.padEnd(8)} ${String(spans).padStart(3)} spans/req: ${Math.round(r.spansPerSec).toLocaleString()} spans/s wall, ${Math.round(r.spansPerCpuSec).toLocaleString()} per CPU-s (cpu ${(100 * r.serverCpuUtil).toFixed(0)}%) ${JSON.stringify(statuses)} rss ${r.rssMiB.toFixed(0)} MiB`);
  return r;
}

// BENCH_OTLP_ONLY=encoding:spans:impl[,…] runs only those HTTP phases and skips the in-process rows (analysis, profiles).
const onlyPhases = process.env.BENCH_OTLP_ONLY?.split(',');
const wanted = (encoding, spans, impl) => onlyPhases === undefined || onlyPhases.includes(`${encoding}:${spans}:${impl}`);
const phases = [];
const rounds = [];
for (const [encoding, spans] of CASES) {
  const byImpl = { tracewire: [], floor: [] };
  for (let round = 1; round <= ROUNDS; round++) {
    for (const impl of ['tracewire', 'floor']) {
      if (!wanted(encoding, spans, impl)) continue;
      if (impl === 'tracewire') await freshSidecar();
      const r = { ...(await phase(impl, encoding, spans)), round };
      byImpl[impl].push(r);
      rounds.push(r);
    }
  }
  for (const impl of ['tracewire', 'floor']) {
    const rs = byImpl[impl].sort((a, b) => a.spansPerCpuSec - b.spansPerCpuSec);
    if (rs.length > 0) phases.push({ ...rs[(rs.length - 1) >> 1], rounds: rs.length, spansPerCpuSecRange: [rs[0].spansPerCpuSec, rs[rs.length - 1].spansPerCpuSec] });
  }
}

// In process, no HTTP: decode only, and decode + bridge, per CPU second.
const { decodeProtobuf, decodeJson } = await import(distUrl('sources/otlp/decode.js'));
const inproc = [];
for (const [encoding, spans] of onlyPhases === undefined ? CASES : []) {
  const b = buildBody(encoding, spans);
  const decode = encoding === 'protobuf' ? decodeProtobuf : decodeJson;
  const opts = { maxSpans: 20000 };
  const row = { encoding, spans };
  // 'no hold': the same with replayRetentionMillis 0, so events for the (absent) users are dropped
  // at once as no_subscriber instead of held: what the hold costs per span.
  for (const mode of ['decode', 'decode+bridge', 'decode+bridge, no hold']) {
    const tw2 = makeTracewire({ jwtSecret: SECRET, wsHeartbeatMillis: 0, ...(mode.endsWith('no hold') ? { replayRetentionMillis: 0 } : {}) });
    const bridges = tw2.otlpBridges;
    const withBridge = mode !== 'decode';
    let n = 0;
    let k = 1e6;
    const c0 = cpuSeconds();
    const until = nowNs() + (quick ? 300e6 : 800e6);
    while (nowNs() < until) {
      for (let i = 0; i < 8; i++) {
        stamp(b, k++);
        const d = decode(b.body, opts);
        if (withBridge) ingest(bridges, d.spans);
        n += d.spans.length;
      }
      // A turn of the event loop, as between requests (timers: verdicts, sweeps).
      await new Promise((r) => setImmediate(r));
    }
    row[mode] = n / (cpuSeconds() - c0);
    await tw2.close(1000);
  }
  inproc.push(row);
  log(`[otlp] in process ${encoding} ${spans}: decode ${Math.round(row.decode).toLocaleString()} spans/CPU-s, decode+bridge ${Math.round(row['decode+bridge']).toLocaleString()}, without the hold ${Math.round(row['decode+bridge, no hold']).toLocaleString()}`);
}

// Sustained, in process: protobuf 512 decode + bridge long enough for the tables to reach their bounds
// (traces kept 10 s for late spans up to maxTraces, held events up to maxHeldEvents, runs judged 2 s after
// they end): the rate over the last seconds, against the rate over the first ones (what a 3-s round sees).
let sustained;
if (onlyPhases === undefined) {
  const b = buildBody('protobuf', 512);
  const tw3 = makeTracewire({ jwtSecret: SECRET, wsHeartbeatMillis: 0 });
  const totalNs = (quick ? 4 : 40) * 1e9;
  const lastNs = (quick ? 1 : 10) * 1e9;
  const t0 = nowNs();
  const c0 = cpuSeconds();
  let n = 0;
  let k = 1e6;
  let first;
  let tail;
  while (nowNs() - t0 < totalNs) {
    for (let i = 0; i < 8; i++) {
      stamp(b, k++);
      ingest(tw3.otlpBridges, decodeProtobuf(b.body, { maxSpans: 20000 }).spans);
      n += 512;
    }
    await new Promise((r) => setImmediate(r));
    const el = nowNs() - t0;
    if (first === undefined && el >= 3e9) first = { n, cpu: cpuSeconds() - c0 };
    if (tail === undefined && el >= totalNs - lastNs) tail = { n, cpu: cpuSeconds() };
  }
  const cpu = cpuSeconds();
  const m = await tw3.metrics.evictions.counter.get();
  const evicted = Object.fromEntries(m.values.filter((v) => v.value > 0).map((v) => [v.labels.reason, v.value]));
  sustained = {
    seconds: totalNs / 1e9,
    firstSeconds: 3,
    firstPerCpuSec: first ? first.n / first.cpu : undefined,
    lastSeconds: lastNs / 1e9,
    lastPerCpuSec: tail ? (n - tail.n) / (cpu - tail.cpu) : undefined,
    traces: tw3.otlpBridges.traceCount,
    held: tw3.hub.stats().held,
    inFlight: tw3.ledger.inFlightCount,
    evicted,
  };
  await tw3.close(1000);
  log(`[otlp] in process protobuf 512 sustained ${sustained.seconds} s: first 3 s ${Math.round(sustained.firstPerCpuSec ?? 0).toLocaleString()} spans/CPU-s, last ${sustained.lastSeconds} s ${Math.round(sustained.lastPerCpuSec ?? 0).toLocaleString()} (traces ${sustained.traces.toLocaleString()}, held ${sustained.held.toLocaleString()}, runs in flight ${sustained.inFlight.toLocaleString()}, evictions ${JSON.stringify(evicted)})`);
}

report({ figure: 'otlp', available: true, concurrency: CONCURRENCY, measureMs: MEASURE_MS, phases, rounds, inproc, sustained });
await client.stop();
await floor.close();
await sc.close();
process.exit(0);
