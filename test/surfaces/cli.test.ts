import { spawn } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { jwtVerify } from 'jose';
import { afterAll, describe, expect, it } from 'vitest';
import { runDemoAgent } from '../../src/demo/demoAgent.js';
import { main } from '../../src/surfaces/cli.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { inProcessTracer, judgedToolRun, startTestSidecar, TEST_SECRET, until } from '../helpers.js';

async function cli(args: string[], env: Record<string, string> = {}): Promise<{ code: number; out: string[]; err: string[] }> {
  const out: string[] = [];
  const err: string[] = [];
  const saved = { ...process.env };
  Object.assign(process.env, env);
  try {
    const code = await main(args, (l) => out.push(l), (l) => err.push(l));
    return { code, out, err };
  } finally {
    process.env = saved;
  }
}

describe('tracewire token', () => {
  it('prints a token for the user signed with the configured secret', async () => {
    const r = await cli(['token', '--user', 'u-42', '--ttl-seconds', '60'], { TRACEWIRE_JWT_SECRET: TEST_SECRET });
    expect(r.code).toBe(0);
    const { payload } = await jwtVerify(r.out[0]!, new TextEncoder().encode(TEST_SECRET));
    expect(payload.sub).toBe('u-42');
    expect(payload.exp! - payload.iat!).toBe(60);
  });

  it('refuses a missing --user with exit code 2', async () => {
    const r = await cli(['token']);
    expect(r.code).toBe(2);
    expect(r.err.join('\n')).toMatch(/--user ID is required/);
  });

  it('reports invalid configuration with its code', async () => {
    const r = await cli(['token', '--user', 'x', '--jwt-secret', 'short']);
    expect(r.code).toBe(2);
    expect(r.err.join('\n')).toMatch(/TW_CONFIG_INVALID: invalid configuration: --jwt-secret must be at least 16 characters/);
  });

  it('explains unknown commands', async () => {
    const r = await cli(['frobnicate']);
    expect(r.code).toBe(2);
    expect(r.err.join('\n')).toMatch(/unknown command "frobnicate"/);
  });
});

describe('tracewire inspect', () => {
  let sc: Sidecar;
  afterAll(async () => sc?.close());

  it('lists judged runs and prints one run\'s timeline', async () => {
    sc = await startTestSidecar({ graceMillis: 20 });
    const { tracer } = inProcessTracer(sc);
    const ids = await runDemoAgent(tracer, { user: 'nobody-listening' });
    const runId = `${ids.traceId}-${ids.spanId}`;
    await until(() => sc.tw.ledger.get(runId)?.judgement !== undefined, 3000, 'verdict');
    const list = await cli(['inspect', '--url', sc.publicUrl, '--verdict', 'missing_events']);
    expect(list.code).toBe(0);
    expect(list.out.join('\n')).toContain(runId);
    expect(list.out.join('\n')).toMatch(/missing_events\s+no_subscriber/);
    const one = await cli(['inspect', runId, '--url', sc.publicUrl]);
    expect(one.code).toBe(0);
    const text = one.out.join('\n');
    expect(text).toMatch(/verdict missing_events \(no_subscriber\)/);
    expect(text).toMatch(/event # 1 agent_started\s+held|event # 1 agent_started\s+dropped/);
    const missing = await cli(['inspect', 'no-such-run', '--url', sc.publicUrl]);
    expect(missing.code).toBe(1);
    expect(missing.err.join('\n')).toMatch(/404 TW_RUN_NOT_FOUND/);
  });

  it('stops with exit code 1 when a server hands out the same page cursor twice', async () => {
    const server = http.createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ run_id: 'r', agent: 'a', user: null, verdict: null, status: 'in_flight', explanation: 'x', timeline: [], next_cursor: 'c2VxOjE' }));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const r = await cli(['inspect', 'r', '--url', `http://127.0.0.1:${(server.address() as AddressInfo).port}`]);
      expect(r.code).toBe(1);
      expect(r.err.join('\n')).toMatch(/the server gave the same page cursor twice/);
    } finally {
      await new Promise((r) => server.close(r));
    }
  });

  it('prints the whole timeline of a run larger than one page of the API', async () => {
    // One agent with 550 tools: 1,102 events, two pages.
    const runId = await judgedToolRun(sc, 'nobody-listening', 550, 3000);
    const one = await cli(['inspect', runId, '--url', sc.publicUrl]);
    expect(one.code).toBe(0);
    expect(one.out.filter((l) => l.startsWith('run '))).toHaveLength(1);
    const seqs = one.out.filter((l) => / event #/.test(l)).map((l) => Number(/#\s*(\d+)/.exec(l)![1]));
    expect(seqs).toEqual(Array.from({ length: 1102 }, (_, i) => i + 1));
    expect(one.out.filter((l) => / (start|end {2}) tool /.test(l))).toHaveLength(1100);
  });
});

describe('tracewire serve', () => {
  it('prints its configuration with secrets hidden, serves, and exits 0 on SIGTERM', async () => {
    const child = spawn(process.execPath, ['bin/tracewire.js', 'serve', '--listen', '127.0.0.1:0', '--otlp-listen', '127.0.0.1:0', '--jwt-secret', 'cli-test-secret-value-1234'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    await until(() => /listening on (http:\/\/127\.0\.0\.1:\d+)/.test(out), 10_000, 'listening line');
    const url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(out)![1]!;
    expect(out).toMatch(/--jwt-secret\s+\*\*\*/);
    expect(out).not.toContain('cli-test-secret-value-1234');
    const health = await fetch(`${url}/healthz`);
    expect(await health.json()).toMatchObject({ status: 'ok', mode: 'emit' });
    const notFound = await fetch(`${url}/nope`);
    expect(notFound.status).toBe(404);
    expect(await notFound.json()).toMatchObject({ code: 'TW_NOT_FOUND' });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(out).toMatch(/tracewire: SIGTERM, shutting down \(bound 10000 ms\)\ntracewire: stopped; runs judged at shutdown: none/);
  });

  it('warns at start-up when its bounds can hold more than the heap limit, and not once they fit', async () => {
    /** Start `serve` with a 256 MiB heap and `flags`; resolve with what it printed by the time it listened. */
    const startWith = async (flags: string[]): Promise<string> => {
      const child = spawn(process.execPath, ['bin/tracewire.js', 'serve', '--listen', '127.0.0.1:0', '--otlp-listen', '127.0.0.1:0', ...flags], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, NODE_OPTIONS: '--max-old-space-size=256' },
      });
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      child.stderr.on('data', (d) => (out += d));
      try {
        await until(() => /listening on http/.test(out), 10_000, 'listening line');
      } finally {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await exited;
      }
      return out;
    };
    const defaults = await startWith([]);
    expect(defaults).toMatch(
      /WARN config: the configured bounds can hold about 1284 MiB \(runs in flight 98, spans in flight 458, traces kept 153, held events 64, resume window 256, judged runs 256\), more than 90% of the heap limit \(\d+ MiB\): lower --max-runs, --max-spans, --max-traces, --max-held-bytes, --replay-max-total-bytes, --runs-max-bytes, or raise the heap limit/,
    );
    const fitted = await startWith(['--max-runs', '20000', '--max-spans', '100000', '--max-traces', '40000', '--max-held-bytes', '16777216', '--replay-max-total-bytes', '33554432', '--runs-max-bytes', '33554432']);
    expect(fitted).toMatch(/listening on http/);
    expect(fitted).not.toMatch(/WARN config/);
  });

  it('refuses to start on bad configuration with exit code 2', async () => {
    const child = spawn(process.execPath, ['bin/tracewire.js', 'serve', '--listen', '0.0.0.0:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    expect(code).toBe(2);
    expect(err).toMatch(/TW_CONFIG_INVALID/);
  });
});

describe('tracewire probe', () => {
  it('passes against a healthy deployment: all five events in order, then the run is complete', async () => {
    const sc = await startTestSidecar({ graceMillis: 20 }, true);
    try {
      const r = await cli(['probe', '--url', sc.publicUrl, '--otlp-url', sc.otlpUrl!, '--jwt-secret', TEST_SECRET, '--timeout-ms', '5000']);
      expect(r.err).toEqual([]);
      expect(r.code).toBe(0);
      expect(r.out[0]).toMatch(/^probe ok: run [0-9a-f]{32}-[0-9a-f]{16} delivered all 5 events in order in \d+ ms \(1:agent_started 2:agent_thinking 3:tool_executing 4:tool_completed 5:agent_completed\)$/);
      const runId = /run (\S+)/.exec(r.out[0]!)![1]!;
      await until(() => sc.tw.ledger.get(runId)?.judgement !== undefined, 3000, 'verdict');
      expect(sc.tw.ledger.get(runId)!.judgement!.verdict).toBe('complete');
    } finally {
      await sc.close();
    }
  });

  it('fails with exit code 1 and says why when events do not arrive', async () => {
    const sc = await startTestSidecar({ graceMillis: 20, failWritesFor: () => true, mode: 'audit' }, true);
    try {
      const r = await cli(['probe', '--url', sc.publicUrl, '--otlp-url', sc.otlpUrl!, '--jwt-secret', TEST_SECRET, '--timeout-ms', '700']);
      expect(r.code).toBe(1);
      expect(r.err.join('\n')).toMatch(/^probe FAILED: timed out after 700 ms with 0 of 5 events \(run \S+; received: nothing\)$/);
    } finally {
      await sc.close();
    }
  });

  it('fails when the token is signed with the wrong secret, naming the server error', async () => {
    const sc = await startTestSidecar({}, true);
    try {
      const r = await cli(['probe', '--url', sc.publicUrl, '--otlp-url', sc.otlpUrl!, '--jwt-secret', 'some-other-secret-0123456', '--timeout-ms', '3000']);
      expect(r.code).toBe(1);
      expect(r.err.join('\n')).toMatch(/probe FAILED: server error TW_AUTH_INVALID/);
    } finally {
      await sc.close();
    }
  });
});

describe('tracewire demo', () => {
  it('prints what a connected client receives and the run\'s verdict, then exits', async () => {
    const child = spawn(process.execPath, ['bin/tracewire.js', 'demo', '--listen', '127.0.0.1:0', '--otlp-listen', '127.0.0.1:0', '--step-ms', '1', '--grace-ms', '50'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    expect(code, out).toBe(0);
    const events = out.split('\n').filter((l) => /^#\s*\d+ /.test(l)).map((l) => l.replace(/^#\s*(\d+) (\S+)\s+(\S+).*$/, '$1 $2 $3'));
    expect(events).toEqual([
      '1 agent_started supervisor', '2 agent_thinking supervisor', '3 tool_executing supervisor', '4 tool_completed supervisor',
      '5 agent_started researcher', '6 agent_thinking researcher', '7 tool_executing researcher', '8 tool_completed researcher',
      '9 agent_completed researcher', '10 agent_thinking supervisor', '11 agent_completed supervisor',
    ]);
    expect(out).toMatch(/u-1\s+complete\s+All 11 expected events were delivered to user u-1\./);
  });
});
