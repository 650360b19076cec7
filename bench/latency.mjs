// Figure 2: span to client latency, in process. One server process runs a
// tracewire sidecar (in-process SpanProcessor -> bridge -> hub) and, beside it,
// the baseline: a plain `ws` server fed by a hand-written emitter that calls
// `ws.send(JSON.stringify(event))` at the same points of the same span code
// path. Clients are raw WebSocket connections in a forked client process.
//
// Method: the load generator takes t0 = process.hrtime (CLOCK_MONOTONIC) just
// before each span start/end call and keys it by the event it causes
// (run_id:seq). The client process stamps each frame with the same clock when
// its bytes are read from the socket, before parsing. CLOCK_MONOTONIC is one
// system-wide clock on Linux, so latency = t_client - t0 needs no offset; the
// process also checks the offset between the two processes' clocks over IPC.
//
// Besides the hand-written baseline, a floor: the same span code path writing
// the smallest frame that names the event, pre-framed, straight to the socket
// (no ws.send, no JSON.stringify of the event): what this machine's loopback
// and process wake-ups cost by themselves.
//
// Readers: the client process reads either *polling* (its event loop kept
// busy by a setImmediate loop, never sleeping in epoll_wait, so a frame is
// read as soon as the kernel has it) or *sleeping* (a plain Node process,
// woken by the OS when data arrives). Waking a sleeping process costs this
// VM tens of microseconds per event, whatever the server does; the polling
// reader takes that out, so the figure is the server's path plus loopback.
// The targets are judged on the polling phases; tracewire and the floor are
// also measured with the sleeping reader, to show what the wake-up adds.
//
// Load: span operations (starts and ends) are paced individually at the
// target rate from a setImmediate loop (1k spans/s = 2k span ops/s), one
// operation per loop turn, as an app's span calls come from separate I/O
// callbacks (Node runs microtasks between callbacks). After a GC pause or a
// scheduler stall, the operations that fell due meanwhile go out one per turn,
// not back to back in one synchronous task: there, anything that finishes its
// work in a microtask (tracewire's drain) would wait for the whole burst, and
// the figure would time the burst, not the span path (bench/README.md).
// Scenarios:
// 1 client (one user), and 100 clients (100 users, one connection each, runs
// round-robin over the users). The tracewire histogram
// tracewire_event_delivery_seconds (hook -> write completion) is read from
// /metrics before and after each tracewire phase as a second view.
import { BasicTracerProvider } from '@opentelemetry/sdk-trace-base';
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import { WebSocketServer } from 'ws';
import { makeTracewire, startSidecar } from './lib/tw.mjs';
import { eventObject, NoopSpanProcessor, RunStepper } from './lib/agentRuns.mjs';
import { ClientProcess } from './lib/clientproc.mjs';
import { deadline, diffHistogram, histogramQuantile, immediate, log, nowNs, parseHistogram, pct, report, sleep } from './lib/common.mjs';

deadline(330_000, 'latency');
const quick = process.env.BENCH_QUICK === '1';
const WARMUP_MS = quick ? 500 : 1000;
/** Later rounds of the same implementation and scenario: its code is warm already. */
const REWARM_MS = 300;
const MEASURE_MS = quick ? 1500 : 2000;
// The polling phases (the figure) run ROUNDS times per scenario, the implementations alternating in
// a rotating order; each quantile reported is the median of the rounds' (one round's p99 on a shared
// 2-vCPU machine can be a single scheduler stall). The sleeping-reader phases run once.
const ROUNDS = quick ? 1 : 3;
const SECRET = 'bench-secret-0123456789abcdef';

// ---- servers -----------------------------------------------------------------
const tw = makeTracewire({ jwtSecret: SECRET, wsHeartbeatMillis: 0 });
const sc = await startSidecar(tw, { host: '127.0.0.1', port: 0 }, undefined);
const twPort = Number(new URL(sc.publicUrl).port);
const twStepperTracer = new BasicTracerProvider({ spanProcessors: [tw.spanProcessor()] }).getTracer('bench');
const baseTracer = new BasicTracerProvider({ spanProcessors: [new NoopSpanProcessor()] }).getTracer('bench');

// The hand-written baseline: a plain ws server and an emitter called from the span code path.
const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
await new Promise((r) => wss.once('listening', r));
const basePort = wss.address().port;
const byUser = new Map();
wss.on('connection', (ws, req) => {
  const user = new URL(req.url, 'http://x').searchParams.get('user');
  let set = byUser.get(user);
  if (!set) byUser.set(user, (set = new Set()));
  set.add(ws);
  ws.on('close', () => set.delete(ws));
});
/** The floor: the smallest frame naming the event, pre-framed, written straight to the socket. */
function floorEmit(e) {
  const set = byUser.get(e.user);
  if (set === undefined) return;
  const p = Buffer.from(`{"run_id":"${e.runId}","seq":${e.seq}}`);
  const f = Buffer.allocUnsafe(p.length + 2);
  f[0] = 0x81;
  f[1] = p.length; // < 126 bytes
  p.copy(f, 2);
  for (const ws of set) ws._socket.write(f);
}
function handWrittenEmit(e) {
  const set = byUser.get(e.user);
  if (set === undefined) return;
  const event = eventObject(e);
  for (const ws of set) ws.send(JSON.stringify(event));
}

const clients = await ClientProcess.start();

// ---- clock check: offset between this process's and the client process's CLOCK_MONOTONIC ----
async function clockOffsetNs() {
  // Round trips over IPC; the client's stamp should sit in the middle of [t0, t1].
  const offsets = [];
  for (let i = 0; i < 20; i++) {
    const t0 = nowNs();
    const r = await clients.request({ cmd: 'clock' });
    const t1 = nowNs();
    offsets.push(r.t - (t0 + t1) / 2);
  }
  offsets.sort((a, b) => a - b);
  return offsets[10];
}

// ---- load -----------------------------------------------------------------
/** Runs span operations at `opsPerSec` for `ms`; returns the stamps of the events they caused. */
function paced(opsPerSec, ms, stepper, after, stamps) {
  return new Promise((resolve) => {
    const start = nowNs();
    const total = Math.round((opsPerSec * ms) / 1000);
    let done = 0;
    const tick = () => {
      const due = Math.min(total, Math.floor(((nowNs() - start) * opsPerSec) / 1e9));
      // One operation per turn (see "Load" above); when behind, the next turn comes at once.
      if (done < due) {
        const t0 = nowNs();
        const e = stepper.step();
        if (e !== undefined) {
          if (stamps !== undefined) stamps.set(`${e.runId}:${e.seq}`, t0);
          after?.(e);
        }
        done++;
      }
      if (done >= total) resolve();
      else setImmediate(tick);
    };
    tick();
  });
}

async function metricsHistogram() {
  const text = await (await fetch(`${sc.publicUrl}/metrics`)).text();
  return parseHistogram(text, 'tracewire_event_delivery_seconds');
}

async function phase(impl, users, spansPerSec, reader, round = 1) {
  await clients.request({ cmd: 'poll', on: reader === 'polling' });
  const group = impl === 'tracewire' ? 'tw' : 'base';
  const stepper = new RunStepper(impl === 'tracewire' ? twStepperTracer : baseTracer, users);
  const after = impl === 'tracewire' ? undefined : impl === 'floor' ? floorEmit : handWrittenEmit;
  const opsPerSec = spansPerSec * 2;
  await paced(opsPerSec, round === 1 ? WARMUP_MS : REWARM_MS, stepper, after, undefined);
  await sleep(100);
  await clients.collect(group);
  const h0 = impl === 'tracewire' ? await metricsHistogram() : undefined;
  const stamps = new Map();
  const eld = monitorEventLoopDelay({ resolution: 1 });
  eld.enable();
  const gc = { count: 0, totalMs: 0, maxMs: 0 };
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      gc.count++;
      gc.totalMs += e.duration;
      gc.maxMs = Math.max(gc.maxMs, e.duration);
    }
  });
  obs.observe({ entryTypes: ['gc'] });
  const cpu0 = process.cpuUsage();
  const w0 = nowNs();
  await paced(opsPerSec, MEASURE_MS, stepper, after, stamps);
  const wall = (nowNs() - w0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  eld.disable();
  await sleep(0);
  obs.disconnect();
  await sleep(200);
  await immediate();
  const { keys, times } = await clients.collect(group);
  const lat = [];
  for (let i = 0; i < keys.length; i++) {
    const t0 = stamps.get(keys[i]);
    if (t0 !== undefined) lat.push(times[i] - t0);
  }
  const s = Float64Array.from(lat).sort();
  const out = {
    impl,
    reader,
    round,
    clients: users.length,
    spansPerSec,
    events: stamps.size,
    received: s.length,
    p50: pct(s, 50),
    p90: pct(s, 90),
    p99: pct(s, 99),
    p999: pct(s, 99.9),
    max: s[s.length - 1],
    serverCpuPct: (100 * (cpu.user + cpu.system)) / 1e6 / wall,
    // How long the measured operations took to issue (MEASURE_MS if the generator kept the rate).
    wallMs: wall * 1000,
    // Event-loop delay of the server process during the phase (stalls show up as latency tails).
    eldP99Ms: eld.percentile(99) / 1e6,
    eldMaxMs: eld.max / 1e6,
    gcCount: gc.count,
    gcTotalMs: gc.totalMs,
    gcMaxMs: gc.maxMs,
  };
  if (h0 !== undefined) {
    const h = diffHistogram(await metricsHistogram(), h0);
    out.metrics = { count: h[h.length - 1]?.[1] ?? 0, p50: histogramQuantile(0.5, h) * 1e9, p99: histogramQuantile(0.99, h) * 1e9 };
  }
  log(`[latency] ${impl.padEnd(9)} ${reader.padEnd(8)} r${round} clients=${users.length} ${spansPerSec}/s events=${out.events} recv=${out.received} wall=${wall.toFixed(2)}s p50=${(out.p50 / 1000).toFixed(1)}µs p99=${(out.p99 / 1000).toFixed(1)}µs eld-max=${out.eldMaxMs.toFixed(1)}ms gc-max=${out.gcMaxMs.toFixed(1)}ms gc-total=${out.gcTotalMs.toFixed(0)}ms` +
    (out.metrics ? ` | /metrics p50≈${(out.metrics.p50 / 1000).toFixed(1)}µs p99≈${(out.metrics.p99 / 1000).toFixed(1)}µs` : ''));
  return out;
}

/** One row per implementation, reader and scenario from its rounds: the median of each quantile, totals and worst stalls. */
function summarise(rounds) {
  const med = (f) => {
    const xs = rounds.map(f).filter((v) => v !== undefined && !Number.isNaN(v)).sort((a, b) => a - b);
    return xs.length === 0 ? undefined : xs[(xs.length - 1) >> 1];
  };
  const r0 = rounds[0];
  const out = {
    impl: r0.impl,
    reader: r0.reader,
    clients: r0.clients,
    spansPerSec: r0.spansPerSec,
    rounds: rounds.length,
    events: rounds.reduce((a, r) => a + r.events, 0),
    received: rounds.reduce((a, r) => a + r.received, 0),
    p50: med((r) => r.p50),
    p90: med((r) => r.p90),
    p99: med((r) => r.p99),
    p999: med((r) => r.p999),
    p99Range: [Math.min(...rounds.map((r) => r.p99)), Math.max(...rounds.map((r) => r.p99))],
    max: Math.max(...rounds.map((r) => r.max)),
    serverCpuPct: med((r) => r.serverCpuPct),
    eldP99Ms: med((r) => r.eldP99Ms),
    eldMaxMs: Math.max(...rounds.map((r) => r.eldMaxMs)),
    gcCount: rounds.reduce((a, r) => a + r.gcCount, 0),
    gcTotalMs: rounds.reduce((a, r) => a + r.gcTotalMs, 0),
    gcMaxMs: Math.max(...rounds.map((r) => r.gcMaxMs)),
  };
  if (r0.metrics !== undefined) out.metrics = { p50: med((r) => r.metrics?.p50), p99: med((r) => r.metrics?.p99) };
  return out;
}

const results = [];
const rounds = [];
const offset = await clockOffsetNs();
log(`[latency] clock offset client-server (CLOCK_MONOTONIC): ${(offset / 1000).toFixed(1)} µs (IPC midpoint estimate)`);
// BENCH_LAT_ONLY=clients:rate:impl[:reader][,…] runs only those phases (analysis; reader defaults to polling).
const onlyPhases = process.env.BENCH_LAT_ONLY?.split(',').map((p) => (p.split(':').length === 3 ? `${p}:polling` : p));
const wanted = (n, rate, impl, reader) => onlyPhases === undefined || onlyPhases.includes(`${n}:${rate}:${impl}:${reader}`);
// Every implementation with the polling reader (the figure); tracewire and the floor also with the sleeping one.
const PHASES = [['tracewire', 'polling'], ['baseline', 'polling'], ['floor', 'polling'], ['tracewire', 'sleeping'], ['floor', 'sleeping']];
for (const n of [1, 100]) {
  if (onlyPhases !== undefined && !onlyPhases.some((p) => p.startsWith(`${n}:`))) continue;
  const users = Array.from({ length: n }, (_, i) => `lat-${n}-${i}`);
  const twConns = [];
  for (const u of users) twConns.push({ path: '/v1/events', headers: { authorization: `Bearer ${await tw.token(u)}` } });
  await clients.open('tw', 'tw', twPort, twConns, true);
  await clients.open('base', 'ws', basePort, users.map((u) => ({ path: `/?user=${encodeURIComponent(u)}` })), true);
  await sleep(100);
  for (const rate of [1000, 10000]) {
    const polling = PHASES.filter(([, reader]) => reader === 'polling');
    const byKey = new Map();
    const run = async (impl, reader, round) => {
      if (!wanted(n, rate, impl, reader)) return;
      const r = await phase(impl, users, rate, reader, round);
      rounds.push(r);
      const key = `${impl}:${reader}`;
      byKey.set(key, [...(byKey.get(key) ?? []), r]);
    };
    for (let round = 1; round <= ROUNDS; round++) {
      // Rotate who goes first, so no implementation always follows the same one.
      const k = (round - 1 + (rate === 10000 ? 1 : 0)) % polling.length;
      for (const [impl, reader] of [...polling.slice(k), ...polling.slice(0, k)]) await run(impl, reader, round);
    }
    for (const [impl, reader] of PHASES.filter(([, r]) => r === 'sleeping')) await run(impl, reader, 1);
    for (const rs of byKey.values()) results.push(summarise(rs));
  }
  await clients.close('tw');
  await clients.close('base');
  await sleep(200);
}

await clients.request({ cmd: 'poll', on: false });
report({ figure: 'latency', clockOffsetNs: offset, warmupMs: WARMUP_MS, measureMs: MEASURE_MS, roundsPerPhase: ROUNDS, phases: results, rounds });
await clients.stop();
wss.close();
await sc.close();
process.exit(0);
