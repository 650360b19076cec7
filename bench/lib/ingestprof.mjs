// Quick in-process ingest profile (no HTTP): decode, or decode + bridge, of a
// pre-built OTLP body, for `node --cpu-prof`. Usage:
//   node --expose-gc bench/lib/ingestprof.mjs [protobuf|json] [spans] [decode|bridge|lean] [seconds]
// lean: decode + the LeanIngest experiment (bench/lib/leanIngest.mjs) instead of the bridge.
// TW_OPTS='{"replayRetentionMillis":0}' sets Tracewire options; HEAP=1 prints what the instance keeps.
// Prints spans per CPU second, main-thread scavenge time per span, and the main-thread GC pauses (scavenges and mark-compact apart).
import { distUrl, makeTracewire } from './tw.mjs';
import { buildBody, stamp } from './otlpBodies.mjs';
import { constants, PerformanceObserver } from 'node:perf_hooks';
import { cpuSeconds, ingest, nowNs } from './common.mjs';

const [encoding = 'protobuf', spansArg = '512', mode = 'bridge', secs = '3'] = process.argv.slice(2);
const { decodeProtobuf, decodeJson } = await import(distUrl('sources/otlp/decode.js'));
const tw = makeTracewire({ jwtSecret: 'bench-secret-0123456789abcdef', wsHeartbeatMillis: 0, ...JSON.parse(process.env.TW_OPTS ?? '{}') });
const b = buildBody(encoding, Number(spansArg));
const decode = encoding === 'protobuf' ? decodeProtobuf : decodeJson;
const bridges = tw.otlpBridges;
const lean = mode === 'lean' ? new (await import('./leanIngest.mjs')).LeanIngest() : undefined;
let n = 0;
let k = 1e6;
globalThis.gc?.();
// Main-thread GC pauses during the loop, young generation (scavenges) and old (mark-compact) apart.
const gc = { minor: 0, minorN: 0, major: 0, majorN: 0 };
const obs = new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    if (e.detail?.kind === constants.NODE_PERFORMANCE_GC_MINOR) {
      gc.minor += e.duration;
      gc.minorN++;
    } else {
      gc.major += e.duration;
      gc.majorN++;
    }
  }
});
obs.observe({ entryTypes: ['gc'] });
const w0 = nowNs();
const c0 = cpuSeconds();
const until = nowNs() + Number(secs) * 1e9;
while (nowNs() < until) {
  for (let i = 0; i < 8; i++) {
    stamp(b, k++);
    const d = decode(b.body, { maxSpans: 20000 });
    if (mode === 'bridge') ingest(bridges, d.spans);
    else if (lean !== undefined) lean.ingest(d.spans);
    n += d.spans.length;
  }
  await new Promise((r) => setImmediate(r));
}
const cpu = cpuSeconds() - c0;
const wallMs = (nowNs() - w0) / 1e6;
await new Promise((r) => setImmediate(r));
obs.disconnect();
const heapNow = process.memoryUsage().heapUsed;
globalThis.gc?.();
const heapKept = process.memoryUsage().heapUsed;
console.log(`${encoding} ${spansArg} ${mode}: ${Math.round(n / cpu).toLocaleString()} spans/CPU-s (${((cpu / n) * 1e9).toFixed(0)} ns/span; scavenge ${((gc.minor * 1e6) / n).toFixed(0)} ns/span), heap ${(heapNow / 2 ** 20).toFixed(0)} MiB (${(heapKept / 2 ** 20).toFixed(0)} MiB live after a full GC); ` +
  `GC pauses ${(((gc.minor + gc.major) / wallMs) * 100).toFixed(0)}% of ${(wallMs / 1000).toFixed(1)} s: scavenges ${gc.minor.toFixed(0)} ms (${gc.minorN}), mark-compact ${gc.major.toFixed(0)} ms (${gc.majorN})`);
if (lean !== undefined) console.log(`lean: ${lean.emitted} events emitted, ${lean.verdicts} verdicts, ${lean.inFlight.size} runs in flight, ${lean.traces.size} traces kept, ${lean.droppedHeld} held events given up`);
else if (mode === 'bridge') {
  const m = await tw.metrics.eventsEmitted.counter.get();
  console.log(`bridge: ${m.values.reduce((a, v) => a + v.value, 0)} events emitted, ${tw.ledger.judgedCount} judged kept, ${tw.ledger.inFlightCount} runs in flight, ${bridges.traceCount} traces kept`);
}
if (process.env.HEAP === '1') {
  // What the instance keeps after the run: heap snapshot totals by object kind.
  const { hub, ledger } = tw;
  console.log(JSON.stringify({ hub: hub.stats(), inFlight: ledger.inFlightCount, judged: ledger.judgedCount, traces: bridges.traceCount, held: bridges.heldCount }));
  const v8 = await import('node:v8');
  const { aggregate } = await import('./heapdiff.mjs');
  globalThis.gc?.();
  const file = v8.writeHeapSnapshot(`/tmp/ingest-${process.pid}.heapsnapshot`);
  const top = [...aggregate(file)].sort((a, b) => b[1].size - a[1].size).slice(0, 20);
  for (const [k, v] of top) console.log(`${(v.size / 2 ** 20).toFixed(1).padStart(7)} MiB ${String(v.count).padStart(9)}  ${k}`);
  (await import('node:fs')).rmSync(file);
}
await tw.close(1000);
process.exit(0);
