// Figure 1: span hook overhead. tracewire's SpanProcessor against a no-op
// SpanProcessor on the same run-shaped spans (BasicTracerProvider), in
// alternating rounds in one process (run with --expose-gc: each batched round
// starts from an empty young generation).
//
//  - hook only: the run loop itself (spans created and ended synchronously;
//    tracewire's hooks only enqueue, its drain runs after the timed loop);
//  - total, batched: the loop plus everything it causes off the hook: the
//    microtask drain (classification, bridge, serialisation, hub enqueue),
//    the hub's corked socket writes and their completion callbacks, to 100
//    connected clients (one per user) in another process;
//  - total, per run: the same, but every run is followed by a turn of the event
//    loop (each run drained on its own, the least favourable batching).
import { BasicTracerProvider } from '@opentelemetry/sdk-trace-base';
import { makeTracewire, startSidecar } from './lib/tw.mjs';
import { NoopSpanProcessor, runOnce, SPANS_PER_RUN } from './lib/agentRuns.mjs';
import { ClientProcess } from './lib/clientproc.mjs';
import { deadline, immediate, log, median, nowNs, pct, report, sortedF64 } from './lib/common.mjs';

deadline(120_000, 'hook');
const quick = process.env.BENCH_QUICK === '1';

const SECRET = 'bench-secret-0123456789abcdef';
const RUNS = 1000; // runs per batched round: 6000 hooks, well under the 65536-hook queue
const ROUNDS = quick ? 15 : 50;
const WARMUP = 10;
const PER_RUN_RUNS = 300;
const USERS = Array.from({ length: 100 }, (_, i) => `u-${i}`);
const CONVS = USERS.map((u) => `c-${u}`);

const tw = makeTracewire({ jwtSecret: SECRET, wsHeartbeatMillis: 0 });
const sc = await startSidecar(tw, { host: '127.0.0.1', port: 0 }, undefined);
const port = Number(new URL(sc.publicUrl).port);
const clients = await ClientProcess.start();
const conns = [];
for (const u of USERS) conns.push({ path: '/v1/events', headers: { authorization: `Bearer ${await tw.token(u)}` } });
await clients.open('tw', 'tw', port, conns);

const twProc = tw.spanProcessor();
const impls = {
  noop: { tracer: new BasicTracerProvider({ spanProcessors: [new NoopSpanProcessor()] }).getTracer('bench') },
  tracewire: { tracer: new BasicTracerProvider({ spanProcessors: [twProc] }).getTracer('bench') },
};

async function batchedRound(impl) {
  await immediate();
  // Start from an empty young generation (for both implementations alike): a collection of the
  // previous round's garbage must not land in this round's timed loop and be charged to its hook.
  globalThis.gc?.({ type: 'minor' });
  const t0 = nowNs();
  for (let i = 0; i < RUNS; i++) runOnce(impl.tracer, USERS[i % USERS.length], CONVS[i % CONVS.length]);
  const t1 = nowNs();
  // Microtasks (processor drain, hub flush) and write callbacks all run before the next immediate.
  await immediate();
  const t2 = nowNs();
  return { hook: (t1 - t0) / RUNS, total: (t2 - t0) / RUNS };
}

async function perRunRound(impl) {
  await immediate();
  const t0 = nowNs();
  for (let i = 0; i < PER_RUN_RUNS; i++) {
    runOnce(impl.tracer, USERS[i % USERS.length], CONVS[i % CONVS.length]);
    await immediate();
  }
  return (nowNs() - t0) / PER_RUN_RUNS;
}

const res = { noop: { hook: [], total: [], perRun: [] }, tracewire: { hook: [], total: [], perRun: [] } };
for (let r = 0; r < WARMUP + ROUNDS; r++) {
  // Alternate which implementation goes first, so drift affects both alike.
  const order = r % 2 === 0 ? ['noop', 'tracewire'] : ['tracewire', 'noop'];
  for (const name of order) {
    const b = await batchedRound(impls[name]);
    const p = await perRunRound(impls[name]);
    if (r < WARMUP) continue;
    res[name].hook.push(b.hook);
    res[name].total.push(b.total);
    res[name].perRun.push(p);
  }
}

const { count } = await clients.count('tw');
const expectedEvents = (WARMUP + ROUNDS) * (RUNS + PER_RUN_RUNS) * 5;
const summary = (xs) => ({ median: median(xs), p90: pct(sortedF64(xs), 90) });
const out = {};
for (const name of ['noop', 'tracewire']) {
  out[name] = { hookNsPerRun: summary(res[name].hook), totalNsPerRun: summary(res[name].total), perRunNsPerRun: summary(res[name].perRun) };
}
const ratio = (k) => out.tracewire[k].median / out.noop[k].median;
const result = {
  figure: 'hook',
  runsPerRound: RUNS,
  rounds: ROUNDS,
  spansPerRun: SPANS_PER_RUN,
  ...out,
  ratioHook: ratio('hookNsPerRun'),
  ratioTotal: ratio('totalNsPerRun'),
  ratioPerRun: ratio('perRunNsPerRun'),
  eventsDelivered: count,
  eventsExpected: expectedEvents,
};
log(`[hook] hook ${ratio('hookNsPerRun').toFixed(3)}x total ${ratio('totalNsPerRun').toFixed(3)}x per-run ${ratio('perRunNsPerRun').toFixed(3)}x delivered ${count}/${expectedEvents}`);
report(result);
await clients.stop();
await sc.close();
process.exit(0);
