// The micro-checks behind the src/ recommendations in bench/README.md ("What
// limits the figures"). Not part of `npm run bench`; run after `npm run build`:
//
//   node bench/analysis.mjs            all checks (~40 s)
//   node bench/analysis.mjs sweep|evict|json|memory-prototype
//
// memory-prototype copies dist/ to a temporary directory (bench/.proto-*), applies two small
// changes there (a lazily created TraceBridge.waiting Map; RunRecord.events and
// RunRecord.spans created at their exact size on the first element instead of
// growing an empty array to 17 slots) and runs the memory figure against both
// builds. src/ and dist/ are not touched.
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { distUrl, makeTracewire } from './lib/tw.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const which = process.argv[2];
const want = (n) => which === undefined || which === n;
const ms = (t0) => Number(process.hrtime.bigint() - t0) / 1e6;

if (want('sweep')) {
  // EventHub's sweeper calls ReplayStore.sweep() every second; it visits every retained run.
  const { ReplayStore } = await import(distUrl('hub/ReplayStore.js'));
  for (const n of [10_000, 100_000, 200_000]) {
    const rs = new ReplayStore({ retentionMillis: 60_000, maxEventsPerRun: 1000, maxBytesPerRun: 1 << 20, maxTotalBytes: 1 << 30, maxIdleMillis: 600_000, now: Date.now });
    const frame = Buffer.alloc(300);
    for (let i = 0; i < n; i++) {
      const ev = { runId: `run-${i}`, user: `u-${i % 100}`, seq: 1, frame, bytes: frame.length, payload: '' };
      rs.add(ev);
      if (i % 5 === 4) rs.ended(`run-${i}`);
    }
    const xs = [];
    for (let r = 0; r < 7; r++) {
      const t0 = process.hrtime.bigint();
      rs.sweep();
      xs.push(ms(t0));
    }
    xs.sort((a, b) => a - b);
    console.log(`[sweep] ReplayStore.sweep() with ${n.toLocaleString()} runs retained, none expired: ${xs[3].toFixed(2)} ms per sweep (the event loop stalls that long every second)`);
  }
}

if (want('evict')) {
  // Past maxTraces every new trace evicts the oldest; evictOldestTrace copies all in-flight runs to find its runs.
  const tw = makeTracewire({ jwtSecret: 'bench-secret-0123456789abcdef', wsHeartbeatMillis: 0, maxTraces: 100_000, replayMaxEventsPerRun: 0, replayRetentionMillis: 0 });
  const br = tw.otlpBridges;
  const span = (i) => ({ traceId: i.toString(16).padStart(32, '0'), spanId: i.toString(16).padStart(16, '0'), name: 'invoke_agent supervisor', startMs: Date.now(), attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'supervisor', 'user.id': 'u' }, statusCode: 0 });
  let t0 = process.hrtime.bigint();
  for (let i = 1; i <= 99_000; i++) br.startSpan(span(i));
  const before = ms(t0) / 99_000;
  t0 = process.hrtime.bigint();
  for (let i = 99_001; i <= 101_000; i++) br.startSpan(span(i));
  const past = ms(t0) / 2000;
  console.log(`[evict] opening a live run: ${(before * 1000).toFixed(1)} µs below maxTraces; ${(past * 1000).toFixed(0)} µs once at maxTraces with ~100k runs in flight (O(in-flight runs) per new trace)`);
  await tw.close(100);
}

if (want('json')) {
  const N = 200_000;
  const runId = `${'a'.repeat(32)}-${'b'.repeat(16)}`;
  const viaStringify = (i) =>
    JSON.stringify({ type: 'tool_completed', run_id: runId, trace_id: 'a'.repeat(32), span_id: 'c'.repeat(16), seq: i, ts: new Date(1764000000000 + i).toISOString(), agent: 'supervisor', conversation_id: 'c-1', data: { tool: 'search_docs', call_id: 'call_1', status: 'ok', duration_ms: 1.5 } });
  const isoOnly = (i) => new Date(1764000000000 + i).toISOString();
  for (const [n, f] of [['JSON.stringify(event) as BridgeRegistry.emit does', viaStringify], ['of which new Date(ts).toISOString()', isoOnly]]) {
    let x = 0;
    for (let i = 0; i < N; i++) x += f(i).length;
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < N; i++) x += f(i).length;
    console.log(`[json] ${n}: ${((ms(t0) * 1e6) / N).toFixed(0)} ns per event`);
  }
}

if (want('memory-prototype')) {
  const dist = fileURLToPath(new URL('../dist', import.meta.url));
  // Inside the repository, so the copy resolves node_modules like dist/ does; removed afterwards.
  const tmp = mkdtempSync(path.join(here, '.proto-'));
  try {
    const proto = path.join(tmp, 'dist');
    cpSync(dist, proto, { recursive: true });
    const patch = (file, pairs) => {
      const p = path.join(proto, file);
      let s = readFileSync(p, 'utf8');
      for (const [a, b] of pairs) {
        if (!s.includes(a)) throw new Error(`memory-prototype: ${file} changed, "${a.slice(0, 60)}" not found`);
        s = s.replace(a, b);
      }
      writeFileSync(p, s);
    };
    patch('bridge/TraceBridge.js', [
      ['    waiting = new Map();', '    waiting = EMPTY_WAITING;'],
      ['            this.waiting.set(node.parentId, [node]);', '            (this.waiting === EMPTY_WAITING ? (this.waiting = new Map()) : this.waiting).set(node.parentId, [node]);'],
      ['            rec.spans.push({ spanId: node.spanId, parentSpanId: node.parentId, kind: node.kind, name: node.name, startMs: node.startMs });',
        '            const sum = { spanId: node.spanId, parentSpanId: node.parentId, kind: node.kind, name: node.name, startMs: node.startMs };\n            if (rec.spans.length === 0) rec.spans = [sum];\n            else rec.spans.push(sum);'],
    ]);
    const tb = path.join(proto, 'bridge/TraceBridge.js');
    writeFileSync(tb, `const EMPTY_WAITING = new Map();\n${readFileSync(tb, 'utf8')}`);
    patch('audit/RunRecord.js', [['        this.events.push(ev);', '        if (this.events.length === 0) this.events = [ev];\n        else this.events.push(ev);']]);
    for (const [name, d] of [['dist/ (as built)', dist], ['prototype', proto]]) {
      const r = spawnSync(process.execPath, [path.join(here, 'memory.mjs')], { encoding: 'utf8', env: { ...process.env, TRACEWIRE_DIST: d }, timeout: 200_000 });
      const line = r.stdout.split('\n').find((l) => l.startsWith('RESULT '));
      if (!line) throw new Error(`memory.mjs failed for ${name}: ${r.stderr.slice(-500)}`);
      const m = JSON.parse(line.slice(7));
      console.log(`[memory-prototype] ${name}: ${m['tw-noreplay'].heapBytesPerRun.toFixed(0)} B/run (no replay), ${m['tw-replay'].heapPlusExternalBytesPerRun.toFixed(0)} B/run (default replay), RSS ${(m['tw-noreplay'].after.rss / 2 ** 20).toFixed(0)} MiB at ${m.runs.toLocaleString()} runs`);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}
process.exit(0);
