import { fork, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import Fastify from 'fastify';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { JwtVerifier } from '../../src/hub/auth.js';
import { Tracewire } from '../../src/Tracewire.js';
import { startTestSidecar, TestClient, until } from '../helpers.js';
import { writeTsLoader } from '../support/tsLoader.js';

/**
 * Graceful shutdown. SIGTERM on `tracewire serve`: stop accepting, write
 * what is queued, close every connection with 1001 (going away; clients
 * reconnect and resume), give in-flight runs the `interrupted` verdict, exit 0
 * within shutdownTimeoutMillis (+1 s hard bound in the CLI).
 *
 * Both children run from source through a small TypeScript loader (the same
 * `main()` bin/tracewire.js calls, so a stale dist/ is never what is tested):
 * 1. `serve` itself, fed 100 live runs through its OTLP receiver (agent spans
 *    exported with endTimeUnixNano 0): close codes, exit code and time, and
 *    refusal of new connections. Its verdicts cannot be observed from outside
 *    once it has exited (it logs no verdict summary), so:
 * 2. a child that builds the same sidecar (startSidecar) with an onVerdict
 *    hook, starts 100 in-flight runs with the in-process tracer and, on
 *    SIGTERM, emits one more event per run and calls sc.close() (what serve
 *    does) and prints the verdict counts before exiting.
 */

const ROOT_URL = new URL('../..', import.meta.url).href;
const SECRET = 'shutdown-test-secret-0123456789';
const RUNS = 100;
const USERS = 10;
const SHUTDOWN_MS = 3000;

let dir = '';
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'tw-shutdown-'));
  writeTsLoader(dir, ROOT_URL);
  // bin/tracewire.js, pointed at src/ instead of dist/.
  writeFileSync(
    join(dir, 'tracewire.mjs'),
    `const { main } = await import(${JSON.stringify(ROOT_URL + 'src/surfaces/cli.ts')});
main(process.argv.slice(2)).then(
  (code) => { if (typeof code === 'number') process.exitCode = code; },
  (err) => { console.error(err instanceof Error ? err.message : err); process.exitCode = 1; },
);
`,
  );
  // An embedded sidecar with a verdict hook and an in-process tracer.
  writeFileSync(
    join(dir, 'embedded.mjs'),
    `import { context, trace } from '@opentelemetry/api';
const { Tracewire } = await import(${JSON.stringify(ROOT_URL + 'src/Tracewire.ts')});
const { startSidecar } = await import(${JSON.stringify(ROOT_URL + 'src/surfaces/server.ts')});
const { BasicTracerProvider } = await import('@opentelemetry/sdk-trace-base');
const verdicts = {};
const tw = new Tracewire({ jwtSecret: ${JSON.stringify(SECRET)}, graceMillis: 100, wsHeartbeatMillis: 0, shutdownTimeoutMillis: ${SHUTDOWN_MS},
  onVerdict: (r) => { verdicts[r.judgement.verdict] = (verdicts[r.judgement.verdict] ?? 0) + 1; } });
const sc = await startSidecar(tw, { host: '127.0.0.1', port: 0 }, undefined);
const tracer = new BasicTracerProvider({ spanProcessors: [tw.spanProcessor()] }).getTracer('shutdown-test');
const open = [];
process.on('message', (m) => {
  if (m.type !== 'start') return;
  for (let i = 0; i < m.runs; i++) {
    const top = tracer.startSpan('invoke_agent supervisor', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'supervisor', 'user.id': 'u-' + (i % m.users) } });
    open.push(trace.setSpan(context.active(), top));
  }
  process.send({ type: 'started' });
});
process.on('SIGTERM', async () => {
  const t0 = Date.now();
  // One more event per in-flight run, published right now: it must reach the client before the 1001 close.
  for (const ctx of open) tracer.startSpan('execute_tool last_words', { attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'last_words' } }, ctx);
  await sc.close();
  const sum = async (name) => {
    const out = {};
    for (const v of (await tw.metrics.registry.getSingleMetric(name).get()).values) if (v.value > 0) out[v.labels.reason ?? v.labels.type] = (out[v.labels.reason ?? v.labels.type] ?? 0) + v.value;
    return out;
  };
  console.log('VERDICTS ' + JSON.stringify(verdicts) + ' IN_FLIGHT ' + tw.ledger.inFlightCount + ' MS ' + (Date.now() - t0));
  console.log('DISCONNECTS ' + JSON.stringify(await sum('tracewire_ws_disconnects_total')));
  console.log('DELIVERED ' + JSON.stringify(await sum('tracewire_events_delivered_total')));
  console.log('DROPPED ' + JSON.stringify(await sum('tracewire_events_dropped_total')));
  process.exit(0);
});
process.send({ type: 'ready', url: sc.publicUrl });
`,
  );
});
afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const children: ChildProcess[] = [];
const clients: TestClient[] = [];
afterEach(() => {
  for (const c of clients.splice(0)) c.ws.terminate();
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

async function client(publicUrl: string, user: string): Promise<TestClient> {
  const token = await new JwtVerifier(SECRET).sign(user, 3600);
  const c = new TestClient(new WebSocket(`${publicUrl.replace('http', 'ws')}/v1/events`, { headers: { authorization: `Bearer ${token}` } }));
  clients.push(c);
  await c.until((x) => x.frames.some((f) => f.type === 'ack'), 5000, `ack for ${user}`);
  return c;
}

function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve({ code: child.exitCode, signal: child.signalCode });
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
}

const hex = (bytes: number): string => randomBytes(bytes).toString('hex');

/** OTLP/JSON for `n` live top-level agent spans (endTimeUnixNano "0"), users u-0..u-9. */
function liveAgentSpans(n: number): string {
  const now = BigInt(Date.now()) * 1_000_000n;
  const spans = Array.from({ length: n }, (_, i) => ({
    traceId: hex(16),
    spanId: hex(8),
    name: 'invoke_agent supervisor',
    kind: 1,
    startTimeUnixNano: String(now + BigInt(i)),
    endTimeUnixNano: '0',
    attributes: [
      { key: 'gen_ai.operation.name', value: { stringValue: 'invoke_agent' } },
      { key: 'gen_ai.agent.name', value: { stringValue: 'supervisor' } },
      { key: 'user.id', value: { stringValue: `u-${i % USERS}` } },
    ],
  }));
  return JSON.stringify({ resourceSpans: [{ resource: { attributes: [{ key: 'service.name', value: { stringValue: 'shutdown-test' } }] }, scopeSpans: [{ scope: { name: 'test' }, spans }] }] });
}

describe('graceful shutdown', () => {
  /** `tracewire serve` from source on free ports; resolves once it prints its listeners. */
  async function serve(extra: string[] = []): Promise<{ child: ChildProcess; publicUrl: string; otlpUrl: string; output: () => { out: string; err: string } }> {
    const child = spawn(
      process.execPath,
      ['--import', join(dir, 'register.mjs'), join(dir, 'tracewire.mjs'), 'serve', '--listen', '127.0.0.1:0', '--otlp-listen', '127.0.0.1:0', '--jwt-secret', SECRET, '--ws-heartbeat-ms', '0', ...extra],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    children.push(child);
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    await until(() => /tracewire OTLP\/HTTP receiver on http:\/\/127\.0\.0\.1:\d+\/v1\/traces/.test(out) || child.exitCode !== null, 15_000, `serve to start; stdout: ${out} stderr: ${err}`);
    return {
      child,
      publicUrl: /tracewire listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(out)![1]!,
      otlpUrl: /tracewire OTLP\/HTTP receiver on (http:\/\/127\.0\.0\.1:\d+)\/v1\/traces/.exec(out)![1]!,
      output: () => ({ out, err }),
    };
  }

  const rawConnect = (url: string, bytes?: string): Promise<net.Socket> =>
    new Promise((resolve) => {
      const u = new URL(url);
      const s = net.connect(Number(u.port), u.hostname, () => {
        if (bytes !== undefined) s.write(bytes);
        resolve(s);
      });
      s.on('error', () => undefined);
    });

  it('tracewire serve: SIGTERM closes clients with 1001, refuses new ones, and exits 0 within the bound with 100 runs in flight', async () => {
    const { child, publicUrl, otlpUrl, output } = await serve(['--shutdown-timeout-ms', String(SHUTDOWN_MS)]);

    const users = Array.from({ length: USERS }, (_, i) => `u-${i}`);
    const cs = await Promise.all(users.map((u) => client(publicUrl, u)));
    const res = await fetch(`${otlpUrl}/v1/traces`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: liveAgentSpans(RUNS) });
    expect(res.status).toBe(200);
    // Every run is live: its agent_started reached its user; all 100 are in flight.
    await until(() => cs.reduce((n, c) => n + c.events.length, 0) >= RUNS, 5000, 'agent_started of every run');
    expect(cs.flatMap((c) => c.events.map((e) => e.type))).toEqual(Array(RUNS).fill('agent_started'));
    const health = (await (await fetch(`${publicUrl}/healthz`)).json()) as { runs_in_flight: number; connections: number };
    expect(health).toMatchObject({ runs_in_flight: RUNS, connections: USERS });

    const t0 = Date.now();
    child.kill('SIGTERM');
    await until(() => /SIGTERM, shutting down/.test(output().out), 2000, 'the shutdown to start');
    // A connection attempted during shutdown (valid token) is refused (503, or the port is closed already), or,
    // if it got in just before the hub stopped accepting, closed with 1001 like the others: never left open.
    const lateToken = await new JwtVerifier(SECRET).sign('u-0', 3600);
    const late = await new Promise<string>((resolve) => {
      const ws = new WebSocket(`${publicUrl.replace('http', 'ws')}/v1/events`, { headers: { authorization: `Bearer ${lateToken}` } });
      ws.on('unexpected-response', (_req, r) => resolve(`http ${r.statusCode}`));
      ws.on('error', (e) => resolve(`error ${(e as NodeJS.ErrnoException).code ?? e.message}`));
      ws.on('close', (code) => resolve(`close ${code}`));
    });
    expect(late).toMatch(/^(http 503|error ECONNREFUSED|error ECONNRESET|close 1001)$/);

    const { code, signal } = await exited(child);
    const took = Date.now() - t0;
    expect({ code, signal }).toEqual({ code: 0, signal: null });
    expect(took).toBeLessThan(SHUTDOWN_MS + 1000);
    for (const c of cs) await c.until((x) => x.closeCode !== undefined, 2000, 'close');
    expect(cs.map((c) => c.closeCode)).toEqual(Array(USERS).fill(1001));
    expect(cs.map((c) => c.closeReason)).toEqual(Array(USERS).fill('TW_WS_SHUTDOWN'));
    expect(cs.every((c) => c.frames.at(-1)?.code === 'TW_WS_SHUTDOWN')).toBe(true);
    expect(output().out).toMatch(/SIGTERM, shutting down \(bound 3000 ms\)/);
    expect(output().err).toBe('');
  });

  it('connections that never finish a request (OTLP or public) do not hold the shutdown: clients still get 1001, exit 0 at once', async () => {
    const { child, publicUrl, otlpUrl, output } = await serve(['--shutdown-timeout-ms', String(SHUTDOWN_MS)]);
    const c = await client(publicUrl, 'u-1');
    // A connection that sends nothing (a load balancer's TCP check), a body that never ends, a head that never ends.
    const idle = await rawConnect(otlpUrl);
    const body = await rawConnect(otlpUrl, 'POST /v1/traces HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"resourceSp');
    const head = await rawConnect(publicUrl, 'GET /healthz HTTP/1.1\r\nHost: a\r\n');
    await new Promise((r) => setTimeout(r, 100));
    const t0 = Date.now();
    child.kill('SIGTERM');
    const { code, signal } = await exited(child);
    expect({ code, signal }, JSON.stringify(output())).toEqual({ code: 0, signal: null });
    expect(Date.now() - t0).toBeLessThan(SHUTDOWN_MS);
    await c.until((x) => x.closeCode !== undefined, 2000, 'close');
    expect(c.closeCode).toBe(1001);
    expect(c.frames.at(-1)?.code).toBe('TW_WS_SHUTDOWN');
    expect(output().out).toMatch(/tracewire: stopped; runs judged at shutdown/);
    expect(output().err).toBe('');
    for (const s of [idle, body, head]) s.destroy();
  });

  it('SIGTERM as soon as the listeners accept, before start-up finished printing, still shuts down cleanly (exit 0)', async () => {
    // A free port known before the start: SIGTERM the moment it accepts a connection.
    const port = await new Promise<number>((resolve) => {
      const srv = net.createServer();
      srv.listen(0, '127.0.0.1', () => {
        const p = (srv.address() as net.AddressInfo).port;
        srv.close(() => resolve(p));
      });
    });
    const child = spawn(
      process.execPath,
      ['--import', join(dir, 'register.mjs'), join(dir, 'tracewire.mjs'), 'serve', '--listen', `127.0.0.1:${port}`, '--otlp-listen', '127.0.0.1:0', '--jwt-secret', SECRET, '--ws-heartbeat-ms', '0'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    children.push(child);
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const deadline = Date.now() + 15_000;
    for (;;) {
      const ok = await new Promise<boolean>((resolve) => {
        const s = net.connect(port, '127.0.0.1', () => {
          s.destroy();
          resolve(true);
        });
        s.on('error', () => resolve(false));
      });
      if (ok) break;
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`serve never listened: ${out}`);
      await new Promise((r) => setTimeout(r, 2));
    }
    child.kill('SIGTERM');
    expect(await exited(child), out).toEqual({ code: 0, signal: null });
    expect(out).toMatch(/SIGTERM, shutting down/);
  });

  it('an OTLP request that arrives while tracewire is closing gets 503 TW_OTLP_SHUTDOWN with Retry-After, not a silent loss', async () => {
    const sc = await startTestSidecar({}, true);
    try {
      const closing = sc.tw.close();
      const res = await fetch(`${sc.otlpUrl}/v1/traces`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: liveAgentSpans(1) });
      expect(res.status).toBe(503);
      expect(res.headers.get('retry-after')).toBe('1');
      expect(res.headers.get('x-tracewire-error')).toBe('TW_OTLP_SHUTDOWN');
      expect(((await res.json()) as { details: Array<{ reason: string }> }).details[0]!.reason).toBe('TW_OTLP_SHUTDOWN');
      await closing;
    } finally {
      await sc.close();
    }
  });

  it('library: closing the fastify app closes tracewire too (clients get 1001), instead of waiting on their connections', async () => {
    const tw = new Tracewire({ jwtSecret: SECRET, wsHeartbeatMillis: 0, logLevel: 'silent' });
    const app = Fastify();
    await app.register(tw.fastifyPlugin);
    await app.listen({ host: '127.0.0.1', port: 0 });
    const c = await client(`http://127.0.0.1:${(app.server.address() as net.AddressInfo).port}`, 'u-2');
    const t0 = Date.now();
    await app.close();
    expect(Date.now() - t0).toBeLessThan(SHUTDOWN_MS);
    expect(tw.closing).toBe(true);
    await c.until((x) => x.closeCode !== undefined, 2000, 'close');
    expect(c.closeCode).toBe(1001);
    await tw.close();
  });

  it('an embedded sidecar: queued events go out before 1001, and the 100 in-flight runs are judged interrupted (not missing_events)', async () => {
    const child = fork(join(dir, 'embedded.mjs'), [], { execArgv: ['--import', join(dir, 'register.mjs')], stdio: ['ignore', 'pipe', 'pipe', 'ipc'] });
    children.push(child);
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const next = (type: string): Promise<Record<string, unknown>> =>
      new Promise((resolve) => {
        const on = (m: Record<string, unknown>): void => {
          if (m.type !== type) return;
          child.off('message', on);
          resolve(m);
        };
        child.on('message', on);
      });
    const { url } = (await next('ready')) as { url: string };
    const cs = await Promise.all(Array.from({ length: USERS }, (_, i) => client(url, `u-${i}`)));
    const started = next('started');
    child.send({ type: 'start', runs: RUNS, users: USERS });
    await started;
    await until(() => cs.reduce((n, c) => n + c.events.length, 0) >= RUNS, 5000, 'agent_started of every run');

    const t0 = Date.now();
    child.kill('SIGTERM');
    const { code } = await exited(child);
    expect(code).toBe(0);
    expect(Date.now() - t0).toBeLessThan(SHUTDOWN_MS + 1000);
    for (const c of cs) await c.until((x) => x.closeCode !== undefined, 2000, 'close');
    expect(cs.map((c) => c.closeCode)).toEqual(Array(USERS).fill(1001));
    // Each run's last event, published as the shutdown began, was flushed before the close frame.
    for (const c of cs) {
      const types = c.events.map((e) => e.type);
      expect(types.filter((t) => t === 'agent_started')).toHaveLength(RUNS / USERS);
      expect(types.filter((t) => t === 'tool_executing')).toHaveLength(RUNS / USERS);
    }
    const m = /VERDICTS (\{.*\}) IN_FLIGHT (\d+)/.exec(out);
    expect(m, out).not.toBeNull();
    expect(JSON.parse(m![1]!)).toEqual({ interrupted: RUNS });
    expect(Number(m![2])).toBe(0);
    // Every connection closed by the shutdown is counted as such; every event emitted was delivered.
    expect(JSON.parse(/DISCONNECTS (\{.*\})/.exec(out)![1]!)).toEqual({ shutdown: USERS });
    expect(JSON.parse(/DELIVERED (\{.*\})/.exec(out)![1]!)).toEqual({ agent_started: RUNS, tool_executing: RUNS });
    expect(JSON.parse(/DROPPED (\{.*\})/.exec(out)![1]!)).toEqual({});
  });
});


describe('a sidecar that fails to start', () => {
  it('leaves the caller\'s Tracewire usable: a retry on a free port serves', async () => {
    const tw = new Tracewire({ jwtSecret: SECRET, wsHeartbeatMillis: 0, logLevel: 'silent' });
    const busy = net.createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', () => r()));
    try {
      const port = (busy.address() as net.AddressInfo).port;
      const { startSidecar } = await import('../../src/surfaces/server.js');
      await expect(startSidecar(tw, { host: '127.0.0.1', port }, undefined)).rejects.toThrow(/TW_CONFIG_INVALID|already in use/);
      expect(tw.closing).toBe(false);
      const sc = await startSidecar(tw, { host: '127.0.0.1', port: 0 }, undefined);
      try {
        expect(((await (await fetch(`${sc.publicUrl}/healthz`)).json()) as { status: string }).status).toBe('ok');
        const c = await client(sc.publicUrl, 'u-3');
        expect(c.frames[0]).toMatchObject({ type: 'ack', user: 'u-3' });
      } finally {
        await sc.close();
      }
    } finally {
      busy.close();
      await tw.close();
    }
  });
});
