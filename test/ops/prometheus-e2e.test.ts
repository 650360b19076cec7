// End to end: a real sidecar under demo traffic (one user whose sends fail), a
// real Prometheus scraping it every second with the project's alert rules
// (their `for:` shortened), then: the critical missing-events alert fires, and
// every dashboard panel query returns data.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { dump } from 'js-yaml';
import WebSocket from 'ws';
import {
  ROOT, allPanels, binaryGate, dashboardFiles, freePort, readText, readYaml, repoPath, run,
  substituteVariables, variableValues, type Dashboard,
} from './support.js';
import { RedisServer, redisGate } from '../hub/fanout/support.js';

const prometheus = binaryGate('prometheus');

/** Shortened `for:` of every alert in the test copy of the rules. */
const TEST_FOR = '2s';
const ALERT_DEADLINE_MS = 60_000;
const PANEL_DEADLINE_MS = 30_000;

interface Rule { alert?: string; record?: string; expr: string; for?: string; labels?: Record<string, string>; annotations?: Record<string, string> }
interface PromAlert { labels: Record<string, string>; state: 'pending' | 'firing'; value: string }
interface PromSample { metric: Record<string, string>; value: [number, string] }

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Series that only move when something goes wrong and that no real traffic can
 * produce on demand: an empty result is accepted for these, but only if the
 * sidecar exposes the metric family (so a misspelt name still fails).
 */
const FAILURE_ONLY: Readonly<Record<string, string>> = {
  tracewire_internal_errors_total: 'faults caught inside tracewire; a healthy sidecar has none',
};

const metricNames = (expr: string): string[] => [...new Set(expr.match(/tracewire_\w+/g) ?? [])];
const failureOnly = (expr: string): boolean => metricNames(expr).length > 0 && metricNames(expr).every((n) => FAILURE_ONLY[n] !== undefined);

/**
 * The demo's traffic is healthy apart from its two bad users, so the test adds
 * the other things staging sees, through the sidecar's real interfaces: a
 * WebSocket client that connects and leaves (disconnects by reason), an OTLP
 * request with a malformed span (rejects by reason) and a span whose parent
 * never arrives (held, then evicted with reason orphan_timeout after
 * --orphan-hold-ms, 10 s by default).
 */
async function addStagingNoise(publicUrl: string, otlpUrl: string): Promise<void> {
  const tok = run(process.execPath, ['bin/tracewire.js', 'token', '--user', 'u-e2e-visitor']);
  if (tok.status !== 0) throw new Error(`tracewire token failed: ${tok.stderr}`);
  const ws = new WebSocket(`${publicUrl.replace(/^http/, 'ws')}/v1/events`, { headers: { authorization: `Bearer ${tok.stdout.trim()}` } });
  await new Promise<void>((resolve, reject) => {
    ws.once('message', () => resolve()); // the ack
    ws.once('error', reject);
  });
  const closed = new Promise<void>((r) => ws.once('close', () => r()));
  ws.close(1000);
  await closed;

  const nowNs = BigInt(Date.now()) * 1_000_000n;
  const span = (traceId: string, name: string, parentSpanId: string) => ({
    traceId, spanId: randomBytes(8).toString('hex'), parentSpanId, name, kind: 1,
    startTimeUnixNano: String(nowNs - 5_000_000n), endTimeUnixNano: String(nowNs), status: {},
  });
  const body = {
    resourceSpans: [{
      resource: { attributes: [{ key: 'service.name', value: { stringValue: 'tracewire-ops-e2e' } }] },
      scopeSpans: [{
        scope: { name: 'tracewire-ops-e2e' },
        spans: [
          span(randomBytes(16).toString('hex'), 'db.query', randomBytes(8).toString('hex')), // parent never arrives
          span('0'.repeat(32), 'broken exporter', ''), // all-zero trace id: rejected
        ],
      }],
    }],
  };
  const res = await fetch(`${otlpUrl}/v1/traces`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  if (!res.ok) throw new Error(`OTLP request refused: ${res.status} ${await res.text()}`);
}

/** The project's rules with every `for:` shortened, everything else as committed. */
function testRules(): unknown {
  const file = readYaml<{ groups: Array<{ name: string; rules: Rule[] }> }>('prometheus/alerts.yml');
  for (const g of file.groups) for (const r of g.rules) if (r.alert && r.for !== undefined) r.for = TEST_FOR;
  return file;
}

/** The project's prometheus.yml, reduced to its tracewire job pointed at the test sidecar, 1 s intervals. */
function testConfig(rulesPath: string, target: string): unknown {
  const cfg = readYaml<{ global?: Record<string, unknown>; scrape_configs: Array<{ job_name: string; static_configs: Array<{ targets: string[] }> }> }>('prometheus/prometheus.yml');
  const job = cfg.scrape_configs.find((s) => s.job_name === 'tracewire');
  if (!job) throw new Error('prometheus/prometheus.yml has no tracewire job');
  return {
    global: { ...cfg.global, scrape_interval: '1s', scrape_timeout: '1s', evaluation_interval: '1s' },
    rule_files: [rulesPath],
    scrape_configs: [{ ...job, static_configs: [{ targets: [target] }] }],
  };
}

/** Resolves with the first match of `re` on the process's stdout; rejects on exit or timeout. */
function waitForOutput(proc: ChildProcess, re: RegExp, timeoutMs: number, log: { text: string }): Promise<RegExpMatchArray> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => done(new Error(`no ${re} within ${timeoutMs} ms; output:\n${log.text}`)), timeoutMs);
    const onData = (chunk: Buffer) => {
      buf += chunk.toString();
      const m = re.exec(buf);
      if (m) done(undefined, m);
    };
    const onExit = (code: number | null) => done(new Error(`exited (${code}) before ${re}; output:\n${log.text}`));
    function done(err?: Error, m?: RegExpMatchArray) {
      clearTimeout(timer);
      proc.stdout!.off('data', onData);
      proc.off('exit', onExit);
      if (err) reject(err);
      else resolve(m!);
    }
    proc.stdout!.on('data', onData);
    proc.once('exit', onExit);
  });
}

function capture(proc: ChildProcess, log: { text: string }): void {
  const add = (chunk: Buffer) => { log.text = (log.text + chunk.toString()).slice(-8000); };
  proc.stdout?.on('data', add);
  proc.stderr?.on('data', add);
}

async function stop(proc: ChildProcess | undefined): Promise<void> {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(timer);
}

async function getJson<T>(url: string): Promise<T> {
  const res = await fetch(url);
  const body = (await res.json()) as { status: string; data: T; error?: string };
  if (body.status !== 'success') throw new Error(`${url}: ${body.error ?? res.status}`);
  return body.data;
}

describe.skipIf(prometheus.skip)('Prometheus end to end (real sidecar, real prometheus)', () => {
  let sidecar: ChildProcess | undefined;
  let prom: ChildProcess | undefined;
  let dir = '';
  let promUrl = '';
  let twUrl = '';
  const sidecarLog = { text: '' };
  const promLog = { text: '' };
  const redis = new RedisServer();

  /** Fail at once, with their output, if the sidecar or Prometheus died. */
  function assertAlive(): void {
    if (sidecar && (sidecar.exitCode !== null || sidecar.signalCode !== null)) throw new Error(`the demo sidecar exited (${sidecar.exitCode ?? sidecar.signalCode}):\n${sidecarLog.text}`);
    if (prom && (prom.exitCode !== null || prom.signalCode !== null)) throw new Error(`prometheus exited (${prom.exitCode ?? prom.signalCode}):\n${promLog.text}`);
  }

  beforeAll(async () => {
    if (!existsSync(repoPath('dist', 'surfaces', 'cli.js'))) {
      const build = run('npm', ['run', 'build', '--silent'], { timeoutMs: 120_000 });
      if (build.status !== 0) throw new Error(`npm run build failed:\n${build.stdout}${build.stderr}`);
    }
    // On a broker (a real redis-server), so the dashboard's fan-out panels have their series.
    if (redisGate.missingInCi) throw new Error('redis-server is not installed (CI must apt-get install redis-server)');
    const broker = redisGate.skip ? [] : ['--broker-url', (await redis.start(), redis.url), '--broker-report-timeout-ms', '150', '--broker-presence-ms', '500'];
    const [twPort, otlpPort, promPort] = [await freePort(), await freePort(), await freePort()];
    sidecar = spawn(process.execPath, [
      'bin/tracewire.js', 'demo',
      '--listen', `127.0.0.1:${twPort}`, '--otlp-listen', `127.0.0.1:${otlpPort}`,
      '--grace-ms', '200', '--runs', '0', '--interval-ms', '100', '--fail-user', 'u-broken', '--quiet', ...broker,
    ], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    capture(sidecar, sidecarLog);
    const ready = await waitForOutput(sidecar, /tracewire demo listening on (http:\/\/[^\s]+)/, 20_000, sidecarLog);
    twUrl = ready[1]!;
    await addStagingNoise(twUrl, `http://127.0.0.1:${otlpPort}`);

    dir = mkdtempSync(join(tmpdir(), 'tw-prom-e2e-'));
    const rulesPath = join(dir, 'alerts.yml');
    writeFileSync(rulesPath, dump(testRules()));
    writeFileSync(join(dir, 'prometheus.yml'), dump(testConfig(rulesPath, new URL(twUrl).host)));
    promUrl = `http://127.0.0.1:${promPort}`;
    prom = spawn(prometheus.path!, [
      `--config.file=${join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${promPort}`,
      '--enable-feature=exemplar-storage',
      '--log.level=warn',
    ], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    capture(prom, promLog);
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (prom.exitCode !== null) throw new Error(`prometheus exited (${prom.exitCode}):\n${promLog.text}`);
      try {
        if ((await fetch(`${promUrl}/-/ready`)).ok) break;
      } catch { /* not listening yet */ }
      if (Date.now() > deadline) throw new Error(`prometheus not ready in 20 s:\n${promLog.text}`);
      await sleep(200);
    }
  }, 150_000);

  afterAll(async () => {
    await Promise.all([stop(prom), stop(sidecar)]);
    await redis.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('scrapes the sidecar successfully', async () => {
    const deadline = Date.now() + 15_000;
    let up: PromSample[] = [];
    while (Date.now() < deadline) {
      assertAlive();
      up = await getJson<{ result: PromSample[] }>(`${promUrl}/api/v1/query?query=${encodeURIComponent('up{job="tracewire"}')}`).then((d) => d.result);
      if (up.length > 0 && up[0]!.value[1] === '1') break;
      await sleep(500);
    }
    const targets = await getJson<{ activeTargets: Array<{ lastError: string; health: string }> }>(`${promUrl}/api/v1/targets`);
    expect(up.map((s) => s.value[1]), JSON.stringify(targets.activeTargets)).toEqual(['1']);
  });

  it(`fires TracewireMissingEventsWhileConnected for the user whose sends fail, within ${ALERT_DEADLINE_MS / 1000} s`, async () => {
    const started = Date.now();
    let firing: PromAlert[] = [];
    let all: PromAlert[] = [];
    while (Date.now() - started < ALERT_DEADLINE_MS) {
      assertAlive();
      all = (await getJson<{ alerts: PromAlert[] }>(`${promUrl}/api/v1/alerts`)).alerts;
      firing = all.filter((a) => a.labels.alertname === 'TracewireMissingEventsWhileConnected' && a.state === 'firing');
      if (firing.length > 0) break;
      await sleep(500);
    }
    expect(firing.length, `alerts: ${JSON.stringify(all)}\nsidecar: ${sidecarLog.text}`).toBeGreaterThan(0);
    expect(firing.some((a) => a.labels.reason === 'send_failed')).toBe(true);
    expect(firing.every((a) => a.labels.reason !== 'no_subscriber' && a.labels.severity === 'critical')).toBe(true);
    // The sidecar is up and lifecycle spans flow: those alerts stay quiet.
    expect(all.filter((a) => ['TracewireDown', 'TracewireMetricsAbsent', 'TracewireLifecycleSpansAbsent'].includes(a.labels.alertname!))).toEqual([]);
  }, ALERT_DEADLINE_MS + 10_000);

  it('returns data for every PromQL expression of every dashboard panel', async () => {
    const queries: Array<{ where: string; expr: string }> = [];
    for (const f of dashboardFiles()) {
      const d = JSON.parse(readText(f)) as Dashboard;
      const values = variableValues(d);
      for (const p of allPanels(d)) {
        for (const t of p.targets ?? []) queries.push({ where: `${f} "${p.title}" ${t.refId}`, expr: substituteVariables(t.expr!, values) });
      }
    }
    expect(queries.length).toBeGreaterThan(0);
    const pending = new Map(queries.map((q) => [q.where, q]));
    const last = new Map<string, string>();
    const deadline = Date.now() + PANEL_DEADLINE_MS;
    // Stop early once only failure-only queries are left empty.
    while ([...pending.values()].some((q) => !failureOnly(q.expr)) && Date.now() < deadline) {
      assertAlive();
      for (const [where, q] of pending) {
        const data = await getJson<{ resultType: string; result: PromSample[] }>(`${promUrl}/api/v1/query?query=${encodeURIComponent(q.expr)}`);
        // Data means at least one series with a finite value (NaN is what Grafana shows as a gap).
        const finite = data.result.filter((s) => Number.isFinite(Number(s.value[1])));
        if (finite.length > 0) pending.delete(where);
        else last.set(where, `${data.result.length} series, none finite`);
      }
      if (pending.size > 0) await sleep(1_000);
    }
    // Failure-only series may stay empty, provided the sidecar exports the family
    // (OpenMetrics names a counter family without its _total suffix).
    const metadata = await getJson<Record<string, unknown[]>>(`${promUrl}/api/v1/metadata`);
    const exported = (n: string) => metadata[n] !== undefined || metadata[n.replace(/_total$/, '')] !== undefined;
    for (const n of Object.keys(FAILURE_ONLY)) expect(exported(n), `the sidecar does not export ${n}`).toBe(true);
    const empty = [...pending.values()]
      .filter((q) => !(failureOnly(q.expr) && metricNames(q.expr).every(exported)))
      .map((q) => `${q.where} (${last.get(q.where)}): ${q.expr}`);
    expect(empty, `panel queries without data:\n${empty.join('\n')}`).toEqual([]);
  }, PANEL_DEADLINE_MS + 15_000);

  it('stores delivery-latency exemplars carrying the trace id (the dashboard link to Tempo)', async () => {
    const now = Date.now() / 1000;
    const q = encodeURIComponent('tracewire_event_delivery_seconds_bucket');
    const data = await getJson<Array<{ seriesLabels: Record<string, string>; exemplars: Array<{ labels: Record<string, string> }> }>>(
      `${promUrl}/api/v1/query_exemplars?query=${q}&start=${now - 300}&end=${now}`,
    );
    const traceIds = data.flatMap((s) => s.exemplars.map((e) => e.labels.trace_id));
    expect(traceIds.length).toBeGreaterThan(0);
    for (const id of traceIds) expect(id).toMatch(/^[0-9a-f]{32}$/);
  });
});

describe.runIf(prometheus.missingInCi)('Prometheus end to end in CI', () => {
  it('has the prometheus binary', () => {
    throw new Error('prometheus is not on PATH; CI must install it (e.g. apt-get install prometheus) for test/ops/prometheus-e2e.test.ts');
  });
});
