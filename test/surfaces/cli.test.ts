import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { jwtVerify } from 'jose';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { runDemoAgent } from '../../src/demo/demoAgent.js';
import { main } from '../../src/surfaces/cli.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { inProcessTracer, judgedToolRun, startTestSidecar, TEST_SECRET, until } from '../helpers.js';

/** Child processes run bin/tracewire.js, the built CLI (`npm test` builds before the suite). */
const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

/** `tracewire ...args` as a child process (killed after the test if still running). */
function tracewire(args: string[], opts: { env?: NodeJS.ProcessEnv } = {}) {
  const child = spawn(process.execPath, ['bin/tracewire.js', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: opts.env ?? process.env,
  });
  children.push(child);
  return child;
}

/** Run `tracewire ...args` to its exit; what it printed, stdout and stderr interleaved. */
async function runToExit(args: string[], env?: NodeJS.ProcessEnv): Promise<{ code: number | null; out: string }> {
  const child = tracewire(args, { env });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  return { code, out };
}

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
    const child = tracewire(['serve', '--listen', '127.0.0.1:0', '--otlp-listen', '127.0.0.1:0', '--jwt-secret', 'cli-test-secret-value-1234']);
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (out += d));
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
      const child = tracewire(['serve', '--listen', '127.0.0.1:0', '--otlp-listen', '127.0.0.1:0', ...flags], { env: { ...process.env, NODE_OPTIONS: '--max-old-space-size=256' } });
      let out = '';
      child.stdout!.on('data', (d) => (out += d));
      child.stderr!.on('data', (d) => (out += d));
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
    const child = tracewire(['serve', '--listen', '0.0.0.0:0']);
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
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

  it('against an OTLP receiver that never answers: exits 1 at its timeout, saying so (the pending request does not keep it alive)', async () => {
    const sc = await startTestSidecar({ graceMillis: 20 }, true);
    // Accepts connections and reads, never answers.
    const silent = net.createServer((sock) => sock.on('data', () => undefined));
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    try {
      const url = `http://127.0.0.1:${(silent.address() as AddressInfo).port}`;
      const t0 = Date.now();
      const r = await runToExit(['probe', '--url', sc.publicUrl, '--otlp-url', url, '--jwt-secret', TEST_SECRET, '--timeout-ms', '800']);
      expect(r.code, r.out).toBe(1);
      expect(r.out).toContain(`probe FAILED: timed out after 800 ms with 0 of 5 events; the OTLP request to ${url} got no answer`);
      // The process itself ends right after (not at undici's 300-s headers timeout).
      expect(Date.now() - t0).toBeLessThan(15_000);
    } finally {
      silent.close();
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
    const { code, out } = await runToExit(['demo', '--listen', '127.0.0.1:0', '--otlp-listen', '127.0.0.1:0', '--step-ms', '1', '--grace-ms', '50']);
    expect(code, out).toBe(0);
    const events = out.split('\n').filter((l) => /^#\s*\d+ /.test(l)).map((l) => l.replace(/^#\s*(\d+) (\S+)\s+(\S+).*$/, '$1 $2 $3'));
    expect(events).toEqual([
      '1 agent_started supervisor', '2 agent_thinking supervisor', '3 tool_executing supervisor', '4 tool_completed supervisor',
      '5 agent_started researcher', '6 agent_thinking researcher', '7 tool_executing researcher', '8 tool_completed researcher',
      '9 agent_completed researcher', '10 agent_thinking supervisor', '11 agent_completed supervisor',
    ]);
    expect(out).toMatch(/u-1\s+complete\s+All 11 expected events were delivered to user u-1\./);
    // Its sidecar is gone once it exits: no inspector link that leads nowhere.
    expect(out).not.toMatch(/http:\/\/\S+\/inspector/);
    expect(out).toContain('(tracewire demo --runs 0 keeps a sidecar with demo traffic running, to open its /inspector)');
  });

  it('with --runs 0 keeps serving and names its inspector, which answers, until SIGTERM', async () => {
    const child = tracewire(['demo', '--listen', '127.0.0.1:0', '--otlp-listen', '127.0.0.1:0', '--runs', '0', '--interval-ms', '200', '--quiet']);
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (out += d));
    await until(() => /\/inspector \(Ctrl-C stops\)/.test(out), 15_000, 'the inspector line');
    const url = /(http:\/\/\S+\/inspector)/.exec(out)![1]!;
    expect((await fetch(url)).status).toBe(200);
    child.kill('SIGTERM');
    expect(await new Promise((r) => child.once('exit', (c) => r(c)))).toBe(0);
  });
});

describe('tracewire refuses what it would otherwise ignore', () => {
  it('serve with a mistyped option exits 2 naming it and the option meant, and never listens', async () => {
    // The operator meant to protect the runs API: `--api-tokn` must not start an unprotected sidecar.
    const child = tracewire(['serve', '--listen', '127.0.0.1:0', '--otlp-listen', '127.0.0.1:0', '--api-tokn', 's3cret']);
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (out += d));
    const listening = new Promise<'listening'>((r) => child.stdout!.on('data', () => /listening on http/.test(out) && r('listening')));
    const exit = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    expect(await Promise.race([exit, listening]), out).toBe(2);
    expect(out).toMatch(/^tracewire: TW_CONFIG_INVALID: invalid configuration: unknown option --api-tokn for tracewire serve \(did you mean --api-token\?\); see tracewire help$/m);
    expect(out).not.toMatch(/listening on/);
  });

  it('every command refuses flags that are not its own nor an option, suggesting the nearest', async () => {
    const closed = 'http://127.0.0.1:9';
    const cases: Array<[string[], string]> = [
      [['token', '--user', 'u-1', '--ttl-secnds', '60'], 'unknown option --ttl-secnds for tracewire token (did you mean --ttl-seconds?)'],
      [['probe', '--url', closed, '--otlp-ur', closed], 'unknown option --otlp-ur for tracewire probe (did you mean --otlp-url?)'],
      [['inspect', '--url', closed, '--verdit', 'missing_events'], 'unknown option --verdit for tracewire inspect (did you mean --verdict?)'],
      [['demo', '--listen', '127.0.0.1:0', '--otlp-listen', '127.0.0.1:0', '--step-ms', '1', '--grace-ms', '20', '--quiet', '--user', '2'], 'unknown option --user for tracewire demo (did you mean --users?)'],
      // Options in any spelling a shell or an environment habit produces; no suggestion when nothing is near.
      [['token', '--user', 'u-1', '--JWT_SECRET', 'x'.repeat(20)], 'unknown option --JWT_SECRET for tracewire token (did you mean --jwt-secret?)'],
      [['token', '--user', 'u-1', '-jwt-secret', 'x'.repeat(20)], 'unknown option -jwt-secret for tracewire token (did you mean --jwt-secret?)'],
      [['token', '--user', 'u-1', '--frobnicate', '1'], 'unknown option --frobnicate for tracewire token; see tracewire help'],
      // A flag that needs a value and has none, and arguments no command takes.
      [['token', '--user', 'u-1', '--jwt-secret'], '--jwt-secret needs a value (--jwt-secret VALUE or --jwt-secret=VALUE)'],
      [['token', '--user', 'u-1', 'extra'], 'unexpected argument "extra" for tracewire token'],
      [['inspect', 'run-1', 'run-2', '--url', closed], 'unexpected argument "run-2" for tracewire inspect'],
    ];
    for (const [args, message] of cases) {
      const r = await cli(args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.out, args.join(' ')).toEqual([]);
      expect(r.err.join('\n'), args.join(' ')).toContain(`tracewire: TW_CONFIG_INVALID: invalid configuration: ${message}`);
    }
  });

  it('still takes every option, its own flags, --flag=value and --help', async () => {
    const r = await cli(['token', '--user=u-7', '--ttl-seconds', '60', '--jwt-secret', TEST_SECRET, '--log-level=warn', '--grace-ms', '5']);
    expect(r.err).toEqual([]);
    expect(r.code).toBe(0);
    expect((await jwtVerify(r.out[0]!, new TextEncoder().encode(TEST_SECRET))).payload.sub).toBe('u-7');
    const help = await cli(['serve', '--help']);
    expect(help.code).toBe(0);
    expect(help.out.join('\n')).toMatch(/^usage:$/m);
  });

  it('warns about TRACEWIRE_* environment variables that are no setting, and still runs', async () => {
    const r = await cli(['token', '--user', 'u-1'], { TRACEWIRE_API_TOKN: 's3cret', TRACEWIRE_FROBNICATE: '1' });
    expect(r.code).toBe(0);
    expect(r.out).toHaveLength(1);
    const warned = (name: string): string[] => r.err.filter((l) => l.includes(` WARN config: ${name} `));
    expect(warned('TRACEWIRE_API_TOKN')).toEqual([expect.stringMatching(/ WARN config: TRACEWIRE_API_TOKN is not a tracewire setting and is ignored \(did you mean TRACEWIRE_API_TOKEN\?\)$/)]);
    expect(warned('TRACEWIRE_FROBNICATE')).toEqual([expect.stringMatching(/ WARN config: TRACEWIRE_FROBNICATE is not a tracewire setting and is ignored$/)]);
    // Quiet at --log-level error, like every other warning.
    const quiet = await cli(['token', '--user', 'u-1', '--log-level', 'error'], { TRACEWIRE_API_TOKN: 's3cret' });
    expect(quiet.code).toBe(0);
    expect(quiet.err).toEqual([]);
  });

  it('probe refuses a --timeout-ms that is not a whole number instead of timing out at once', async () => {
    const sc = await startTestSidecar({}, true);
    try {
      for (const [v, message] of [['abc', '--timeout-ms="abc" is not a whole number'], ['0', '--timeout-ms=0 is under its minimum 1']]) {
        const r = await cli(['probe', '--url', sc.publicUrl, '--otlp-url', sc.otlpUrl!, '--jwt-secret', TEST_SECRET, '--timeout-ms', v]);
        expect(r.code).toBe(2);
        expect(r.err.join('\n')).toContain(`TW_CONFIG_INVALID: invalid configuration: ${message}`);
      }
    } finally {
      await sc.close();
    }
  });
});

describe('tracewire demo, stopping', () => {
  it('reads its verdicts with the API token when one is configured, then exits 0', async () => {
    const { code, out } = await runToExit(['demo', '--listen', '127.0.0.1:0', '--otlp-listen', '127.0.0.1:0', '--step-ms', '1', '--grace-ms', '50', '--quiet'], { ...process.env, TRACEWIRE_API_TOKEN: 's3cret-api-token' });
    expect(code, out).toBe(0);
    expect(out).toMatch(/^ {2}u-1\s+complete\s+All 11 expected events were delivered to user u-1\.$/m);
  });

  it('refuses --users that is not a whole number from 1 before starting, and exits', async () => {
    for (const [v, message] of [['abc', '--users="abc" is not a whole number'], ['0', '--users=0 is under its minimum 1']]) {
      const { code, out } = await runToExit(['demo', '--listen', '127.0.0.1:0', '--otlp-listen', '127.0.0.1:0', '--quiet', '--users', v]);
      expect(code, out).toBe(2);
      expect(out).toContain(`tracewire: TW_CONFIG_INVALID: invalid configuration: ${message}`);
      expect(out).not.toMatch(/listening on/);
    }
  });
});

describe('tracewire serve, start-up failures', () => {
  it('exits 2 naming the listener when its port is taken, instead of hanging with the other listener open', async () => {
    const busy = net.createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
    const port = (busy.address() as AddressInfo).port;
    try {
      const { code, out } = await runToExit(['serve', '--listen', '127.0.0.1:0', '--otlp-listen', `127.0.0.1:${port}`]);
      expect(code, out).toBe(2);
      expect(out).toContain(`tracewire: TW_CONFIG_INVALID: invalid configuration: --otlp-listen 127.0.0.1:${port}: cannot listen, the address is already in use (EADDRINUSE)`);
    } finally {
      await new Promise((r) => busy.close(r));
    }
  });
});
