// Shared helpers for the benchmarks: clocks, statistics, CPU accounting,
// result hand-off to bench/run.mjs, and a bounded lifetime for every process.
import os from 'node:os';

/**
 * The clock every latency figure uses: CLOCK_MONOTONIC in nanoseconds
 * (process.hrtime). On Linux it is one system-wide clock, so a timestamp taken
 * in the server process and one taken in a client process are directly
 * comparable (see bench/README.md). Fits a double exactly for ~100 days of uptime.
 */
export const nowNs = () => Number(process.hrtime.bigint());

/** CPU seconds (user + system) this process has used so far. */
export function cpuSeconds() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** Percentile of an ascending-sorted numeric array (nearest rank). */
export function pct(sorted, p) {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

export function median(xs) {
  const s = Float64Array.from(xs).sort();
  return pct(s, 50);
}

export function sortedF64(xs) {
  return Float64Array.from(xs).sort();
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Next turn of the event loop after I/O (lets writes and their callbacks run). */
export const immediate = () => new Promise((r) => setImmediate(r));

export function machine() {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model?.trim() ?? 'unknown',
    cores: cpus.length,
    node: process.version,
    platform: `${os.platform()} ${os.release()}`,
    totalMemGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    date: new Date().toISOString(),
  };
}

/** Hand a figure's results to bench/run.mjs (one line on stdout) and log it. */
export function report(result) {
  process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
}

export function log(...args) {
  process.stderr.write(`${args.join(' ')}\n`);
}

/** Every benchmark process dies after `ms` no matter what (nothing outlives `npm run bench`). */
export function deadline(ms, what) {
  const t = setTimeout(() => {
    log(`[${what}] hard deadline of ${ms} ms reached, exiting`);
    process.exit(3);
  }, ms);
  t.unref();
  return t;
}

/** Prometheus histogram_quantile over cumulative buckets [[le, count], ...] (le ascending, +Inf last). */
export function histogramQuantile(q, buckets) {
  if (buckets.length === 0) return NaN;
  const total = buckets[buckets.length - 1][1];
  if (total === 0) return NaN;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (!Number.isFinite(le)) return prevLe; // in the +Inf bucket: the highest finite bound
      if (count === prevCount) return le;
      return prevLe + ((le - prevLe) * (rank - prevCount)) / (count - prevCount);
    }
    prevLe = le;
    prevCount = count;
  }
  return prevLe;
}

/**
 * Reads one histogram from a Prometheus text exposition, summing all label
 * sets per `le`. Returns [[le, cumulativeCount], ...] ascending.
 */
export function parseHistogram(text, name) {
  const byLe = new Map();
  const prefix = `${name}_bucket{`;
  for (const line of text.split('\n')) {
    if (!line.startsWith(prefix)) continue;
    const m = /le="([^"]+)"[^}]*\}\s+([0-9.eE+-]+)/.exec(line);
    if (!m) continue;
    const le = m[1] === '+Inf' ? Infinity : Number(m[1]);
    byLe.set(le, (byLe.get(le) ?? 0) + Number(m[2]));
  }
  return [...byLe.entries()].sort((a, b) => a[0] - b[0]);
}

/** Bucket-wise difference of two cumulative histograms (after - before). */
export function diffHistogram(after, before) {
  const b = new Map(before);
  return after.map(([le, c]) => [le, c - (b.get(le) ?? 0)]);
}

export const fmtUs = (ns) => (Number.isFinite(ns) ? `${(ns / 1000).toFixed(ns < 10_000 ? 1 : 0)} µs` : 'n/a');
export const fmtInt = (n) => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : 'n/a');

/**
 * Decoded OTLP spans into a BridgeRegistry the way the receiver hands over a
 * request (`ingest`), or span by span for builds from before it had one
 * (`TRACEWIRE_DIST` A/B runs against older builds).
 */
export function ingest(bridges, spans) {
  if (typeof bridges.ingest === 'function') {
    bridges.ingest(spans, (err) => {
      throw err;
    });
    return;
  }
  for (const s of spans) (s.endMs === undefined ? bridges.startSpan(s) : bridges.endSpan(s));
}
