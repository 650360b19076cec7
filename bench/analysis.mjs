// The micro-checks behind the src/ recommendations in bench/README.md ("What
// limits the figures"). Not part of `npm run bench`; run after `npm run build`:
//
//   node bench/analysis.mjs            all checks (~30 s)
//   node bench/analysis.mjs sweep|evict|otlp-hold|survivors|detail|lean
//
//   sweep      ReplayStore.sweep() with many retained runs (a full scan every second)
//   evict      eviction cost at each bound: a new trace at maxTraces, an orphan span at maxOrphanSpans, a resume-window event at replayMaxTotalBytes
//   otlp-hold  decode + bridge per span with the hold for absent users on and off, and the GC pauses of each
//   survivors  bytes allocated per OTLP span, and how many of them survive a young-generation collection
//   detail     GET /api/runs/:id of a run at the span bound (10,000 spans, 20,000 events): one page against the whole run
//   lean       the ceiling of a columnar in-flight model (bench/lib/leanIngest.mjs, an experiment) beside the
//              bridge and decoding alone, in process, per OTLP case (~2 min)
import { spawnSync } from 'node:child_process';
import v8 from 'node:v8';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { distUrl, makeTracewire } from './lib/tw.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const which = process.argv[2];
const want = (n) => which === undefined || which === n;
const ms = (t0) => Number(process.hrtime.bigint() - t0) / 1e6;

if (want('sweep')) {
  // EventHub's sweeper calls ReplayStore.sweep() every second: ended runs expire from a queue (cost = what
  // expires); the idle pass over every retained run happens every max(1 s, maxIdleMillis / 4) only.
  const { ReplayStore } = await import(distUrl('hub/ReplayStore.js'));
  for (const n of [10_000, 100_000, 200_000]) {
    const rs = new ReplayStore({ retentionMillis: 60_000, maxEventsPerRun: 1000, maxBytesPerRun: 1 << 20, maxTotalBytes: 1 << 30, maxIdleMillis: 600_000, now: Date.now });
    const frame = Buffer.alloc(300);
    for (let i = 0; i < n; i++) {
      const ev = { runId: `run-${i}`, user: `u-${i % 100}`, seq: 1, frame, bytes: frame.length, payload: '', run: { endMs: undefined } };
      rs.add(ev);
      if (i % 5 === 4) rs.ended(`run-${i}`);
    }
    const xs = [];
    for (let r = 0; r < 8; r++) {
      const t0 = process.hrtime.bigint();
      rs.sweep();
      xs.push(ms(t0));
    }
    const idlePass = xs.shift(); // the first sweep includes the idle pass
    xs.sort((a, b) => a - b);
    console.log(`[sweep] ReplayStore.sweep() with ${n.toLocaleString()} runs retained, none expired: ${xs[3].toFixed(3)} ms per sweep; the idle pass (every 150 s by default): ${idlePass.toFixed(2)} ms`);
  }
}

if (want('evict')) {
  // Past maxTraces every new trace evicts the oldest (its runs are found through its own spans).
  const tw = makeTracewire({ jwtSecret: 'bench-secret-0123456789abcdef', wsHeartbeatMillis: 0, maxTraces: 100_000, replayMaxEventsPerRun: 0, replayRetentionMillis: 0 });
  const br = tw.otlpBridges;
  const span = (i) => ({ traceId: i.toString(16).padStart(32, '0'), spanId: i.toString(16).padStart(16, '0'), name: 'invoke_agent supervisor', startMs: Date.now(), attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'supervisor', 'user.id': 'u' }, statusCode: 0 });
  let t0 = process.hrtime.bigint();
  for (let i = 1; i <= 99_000; i++) br.startSpan(span(i));
  const before = ms(t0) / 99_000;
  t0 = process.hrtime.bigint();
  for (let i = 99_001; i <= 101_000; i++) br.startSpan(span(i));
  const past = ms(t0) / 2000;
  console.log(`[evict] opening a live run: ${(before * 1000).toFixed(1)} µs below maxTraces; ${(past * 1000).toFixed(1)} µs once at maxTraces with ~100k runs in flight`);
  await tw.close(100);

  // Spans whose parent never arrives (an exporter that drops parents): past maxOrphanSpans every new one gives up
  // the oldest held span, so the oldest entries of the held index keep leaving (see EvictionOrder).
  const tw2 = makeTracewire({ jwtSecret: 'bench-secret-0123456789abcdef', wsHeartbeatMillis: 0, maxOrphanSpans: 20_000, replayRetentionMillis: 0 });
  const orphan = (i) => ({ traceId: i.toString(16).padStart(32, '0'), spanId: i.toString(16).padStart(16, '0'), parentSpanId: 'f'.repeat(16), name: 'execute_tool lookup', startMs: Date.now() - 1, endMs: Date.now(), attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'lookup' }, statusCode: 0 });
  const flood = (from, n) => {
    const t = process.hrtime.bigint();
    for (let i = from; i < from + n; i += 500) tw2.otlpBridges.ingest(Array.from({ length: 500 }, (_, k) => orphan(i + k)), () => {});
    return (ms(t) * 1000) / n;
  };
  const below = flood(1, 20_000);
  const atBound = flood(20_001, 100_000);
  console.log(`[evict] an orphan span (its parent never arrives): ${below.toFixed(1)} µs below maxOrphanSpans (20,000); ${atBound.toFixed(1)} µs for the next 100,000, each giving up the oldest held span`);
  await tw2.close(100);

  // Many orphans of one missing parent in one trace (a fan-out whose parent span was dropped), given up together
  // by the orphan sweep: each is taken out of its parent's waiting list.
  let clock = Date.now();
  const tw3 = makeTracewire({ jwtSecret: 'bench-secret-0123456789abcdef', wsHeartbeatMillis: 0, replayRetentionMillis: 0, now: () => clock });
  const siblings = (n, trace) => Array.from({ length: n }, (_, k) => ({ ...orphan(k + 1), traceId: trace.repeat(32) }));
  for (const [n, trace] of [[1000, 'a'], [10_000, 'b']]) {
    tw3.otlpBridges.ingest(siblings(n, trace), () => {});
    clock += 60_000; // past orphanHoldMillis (10 s), with no timer in between
    const t = process.hrtime.bigint();
    tw3.otlpBridges.sweep();
    const took = ms(t);
    console.log(`[evict] ${n.toLocaleString()} orphans of one missing parent, given up by one sweep: ${took.toFixed(1)} ms (${((took * 1000) / n).toFixed(2)} µs each; ${tw3.otlpBridges.heldCount} still held)`);
  }
  await tw3.close(100);

  // The resume window past replayMaxTotalBytes: every event of a new run drops the oldest run.
  const { ReplayStore } = await import(distUrl('hub/ReplayStore.js'));
  const rs = new ReplayStore({ retentionMillis: 60_000, maxEventsPerRun: 1000, maxBytesPerRun: 1 << 20, maxTotalBytes: 50_000 * 460, maxIdleMillis: 600_000, now: Date.now });
  const frame = Buffer.alloc(300);
  const replayed = (from, n) => {
    const evs = Array.from({ length: n }, (_, k) => ({ runId: `run-${from + k}`, user: `u-${k % 100}`, seq: 1, frame, bytes: frame.length, payload: '', run: { endMs: undefined } }));
    const t = process.hrtime.bigint();
    for (const ev of evs) rs.add(ev);
    return (ms(t) * 1000) / n;
  };
  const under = replayed(0, 50_000);
  const over = replayed(50_000, 200_000);
  console.log(`[evict] a resume-window event of a new run: ${under.toFixed(2)} µs below replayMaxTotalBytes (50,000 runs); ${over.toFixed(2)} µs for the next 200,000, each dropping the oldest run`);
}

if (want('otlp-hold')) {
  // The OTLP figure's users have no connection: every event is held for them (60 s window, bounded).
  // The same in-process decode + bridge loop with the hold on (defaults) and off (replayRetentionMillis 0:
  // such events are dropped at once as no_subscriber) shows what the hold costs per span.
  const prof = path.join(here, 'lib', 'ingestprof.mjs');
  for (const [name, opts] of [['hold on (defaults)', {}], ['hold off (replayRetentionMillis 0)', { replayRetentionMillis: 0 }]]) {
    const r = spawnSync(process.execPath, ['--expose-gc', prof, 'protobuf', '512', 'bridge', '5'], { encoding: 'utf8', env: { ...process.env, TW_OPTS: JSON.stringify(opts) }, timeout: 60_000 });
    const line = r.stdout.split('\n').find((l) => l.includes('spans/CPU-s'));
    console.log(`[otlp-hold] ${name}: ${line ?? `failed: ${r.stderr.slice(-300)}`}`);
  }
}

if (want('detail')) {
  // The run detail builds its answer on the event loop: a run at maxSpansPerRun, whole against one page.
  const { runDetail } = await import(distUrl('audit/runsApi.js'));
  const tw = makeTracewire({ jwtSecret: 'bench-secret-0123456789abcdef', wsHeartbeatMillis: 0, graceMillis: 0, replayRetentionMillis: 0 });
  const traceId = 'd'.repeat(32);
  const id = (i) => i.toString(16).padStart(16, '0');
  const t0 = Date.now();
  const spans = Array.from({ length: 9999 }, (_, k) => ({ traceId, spanId: id(k + 2), parentSpanId: id(1), name: 'execute_tool t', startMs: t0 + k * 0.01, endMs: t0 + k * 0.01 + 0.005, attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 't' }, statusCode: 0 }));
  spans.push({ traceId, spanId: id(1), name: 'invoke_agent a', startMs: t0 - 1, endMs: t0 + 200, attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'a', 'user.id': 'u' }, statusCode: 0 });
  tw.otlpBridges.ingest(spans, (err) => {
    throw err;
  });
  const run = tw.ledger.get(`${traceId}-${id(1)}`);
  const time = (page) => {
    const xs = [];
    let bytes = 0;
    for (let k = 0; k < 15; k++) {
      const t = process.hrtime.bigint();
      bytes = JSON.stringify(runDetail(run, undefined, page)).length;
      xs.push(ms(t));
    }
    xs.sort((a, b) => a - b);
    return { ms: xs[7], mib: bytes / 2 ** 20 };
  };
  // Medians of 15, the whole run first (it warms up the code the pages share).
  const whole = time({ afterSeq: 0, limit: 1e9 });
  const first = time({ afterSeq: 0, limit: 1000 });
  const middle = time({ afterSeq: 10_000, limit: 1000 });
  console.log(
    `[detail] a run of ${run.spans.length.toLocaleString()} spans and ${run.events.length.toLocaleString()} events, built and serialised: ` +
      `whole ${whole.ms.toFixed(0)} ms (${whole.mib.toFixed(1)} MiB); a page of 1,000 events: first ${first.ms.toFixed(1)} ms, middle ${middle.ms.toFixed(1)} ms (${first.mib.toFixed(2)} MiB)`,
  );
  await tw.close(100);
}

if (which === 'lean') {
  // Not in the default run (2 min). Each case: decode only, decode + LeanIngest, decode + the bridge, in separate
  // processes, interleaved, 3 rounds of 3 s; medians of spans per CPU second.
  const prof = path.join(here, 'lib', 'ingestprof.mjs');
  for (const [encoding, spans] of [['protobuf', '512'], ['protobuf', '8'], ['json', '512']]) {
    const rates = { decode: [], lean: [], bridge: [] };
    for (let round = 0; round < 3; round++) {
      for (const mode of Object.keys(rates)) {
        const r = spawnSync(process.execPath, ['--expose-gc', prof, encoding, spans, mode, '3'], { encoding: 'utf8', timeout: 60_000 });
        const m = /([\d,]+) spans\/CPU-s/.exec(r.stdout);
        if (m === null) throw new Error(`ingestprof ${encoding} ${spans} ${mode} failed: ${r.stderr.slice(-300)}`);
        rates[mode].push(Number(m[1].replace(/,/g, '')));
      }
    }
    const med = (xs) => [...xs].sort((a, b) => a - b)[1];
    const us = (rate) => 1e6 / rate;
    const [d, l, b] = [med(rates.decode), med(rates.lean), med(rates.bridge)];
    console.log(
      `[lean] ${encoding} ${spans}: decode only ${Math.round(d / 1000)}k spans/CPU-s (${us(d).toFixed(2)} µs/span); ` +
        `+ lean model ${Math.round(l / 1000)}k (+${(us(l) - us(d)).toFixed(2)} µs); + bridge ${Math.round(b / 1000)}k (+${(us(b) - us(d)).toFixed(2)} µs); lean/bridge ${(l / b).toFixed(2)}×`,
    );
  }
}

if (want('survivors')) {
  // What a scavenge copies is what is alive: in steady state (after 3 s of ingest, the hold full), 20 requests
  // of 512 spans between two young-generation collections; heap used before, after the requests, and after the
  // second collection. Run with --expose-gc (re-spawned with it when missing).
  if (typeof globalThis.gc !== 'function') {
    const r = spawnSync(process.execPath, ['--expose-gc', fileURLToPath(import.meta.url), 'survivors'], { stdio: 'inherit', timeout: 60_000 });
    process.exit(r.status ?? 1);
  }
  const { decodeProtobuf } = await import(distUrl('sources/otlp/decode.js'));
  const { buildBody, stamp } = await import('./lib/otlpBodies.mjs');
  for (const [name, opts] of [['hold on (defaults)', {}], ['hold off (replayRetentionMillis 0)', { replayRetentionMillis: 0 }]]) {
    const tw = makeTracewire({ jwtSecret: 'bench-secret-0123456789abcdef', wsHeartbeatMillis: 0, ...opts });
    const b = buildBody('protobuf', 512);
    let k = 1;
    const request = () => {
      stamp(b, k++);
      tw.otlpBridges.ingest(decodeProtobuf(b.body, { maxSpans: 20000 }).spans, (err) => {
        throw err;
      });
    };
    const until = Date.now() + 3000;
    while (Date.now() < until) {
      for (let i = 0; i < 8; i++) request();
      await new Promise((r) => setImmediate(r));
    }
    const used = () => v8.getHeapStatistics().used_heap_size;
    const rows = [];
    for (let round = 0; round < 3; round++) {
      globalThis.gc({ type: 'minor' });
      globalThis.gc({ type: 'minor' });
      const u0 = used();
      for (let i = 0; i < 20; i++) request();
      const u1 = used();
      globalThis.gc({ type: 'minor' });
      rows.push([(u1 - u0) / (20 * 512), (used() - u0) / (20 * 512)]);
    }
    rows.sort((a, b) => a[1] - b[1]);
    const [alloc, kept] = rows[1];
    console.log(`[survivors] ${name}: ${alloc.toFixed(0)} B allocated per span, ${kept.toFixed(0)} B of it alive at the next young-generation collection (${((100 * kept) / alloc).toFixed(0)}%)`);
    await tw.close(100);
  }
}

process.exit(0);
