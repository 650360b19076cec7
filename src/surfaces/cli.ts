import { checkArgs, type CommandArgs, describeConfig, intFlag, OPTIONS, parseArgs, resolveConfig, type TracewireConfig, unknownEnvWarnings } from '../config/Config.js';
import { Diag, type LogLevel } from '../errors/Diag.js';
import { TracewireError } from '../errors/errors.js';
import { JwtVerifier } from '../hub/auth.js';
import { Tracewire, VERSION } from '../Tracewire.js';
import { probe } from './probe.js';
import { startSidecar, type Sidecar } from './server.js';

const USAGE = `tracewire ${VERSION}: OpenTelemetry spans in, per-user agent events out, silence flagged.

usage:
  tracewire serve   [options]                 run the sidecar (public listener + OTLP receiver)
  tracewire token   --user ID [--ttl-seconds N] print a dev token for a user, signed with --jwt-secret
  tracewire probe   --url URL --otlp-url URL    check a live deployment delivers all five events in order
  tracewire inspect [RUN_ID] --url URL [--verdict V] [--agent A] [--limit N]
                                               list judged runs, or one run's timeline, in the terminal
  tracewire demo    [--runs N] [--interval-ms N] [--users N] [--fail-user ID] [--offline-user ID] [--quiet]
                                               a sidecar with synthetic agent traffic; prints what a client receives

options (flag, then environment variable, then default):
${OPTIONS.map((o) => `  ${o.flag.padEnd(26)} ${o.env.padEnd(34)} ${o.default === '' ? '(unset)' : o.kind === 'secret' ? '(built-in, loopback only)' : o.default}\n      ${o.doc}`).join('\n')}
`;

type Out = (line: string) => void;

function config(flags: Record<string, string>): TracewireConfig {
  return resolveConfig({ flags, env: process.env });
}

/** Each command's own flags and positional arguments; every command also takes the OPTIONS flags. */
const COMMANDS: Readonly<Record<string, CommandArgs>> = {
  serve: {},
  token: { valued: ['--user', '--ttl-seconds'] },
  probe: { valued: ['--url', '--otlp-url', '--timeout-ms'] },
  inspect: { valued: ['--url', '--verdict', '--agent', '--user', '--limit', '--since'], positionals: 1 },
  demo: { valued: ['--runs', '--interval-ms', '--users', '--fail-user', '--offline-user', '--step-ms'], booleans: ['--quiet'] },
};

/** Run the CLI; resolves with the exit code. */
export async function main(argv: readonly string[], out: Out = (l) => console.log(l), err: Out = (l) => console.error(l)): Promise<number> {
  const parsed = parseArgs(argv, new Set(['--help', '--quiet']));
  const { flags, positionals } = parsed;
  const cmd = positionals[0];
  if (cmd === 'help' || flags['--help'] !== undefined || positionals.includes('-h')) {
    out(USAGE);
    return 0;
  }
  try {
    if (cmd !== undefined && COMMANDS[cmd] !== undefined) {
      checkArgs(parsed, COMMANDS[cmd]);
      warnUnknownEnv(flags, err);
    }
    switch (cmd) {
      case 'serve':
        return await serve(flags, out, err);
      case 'token': {
        const user = take(flags, '--user');
        if (!user) {
          err('tracewire token: --user ID is required');
          return 2;
        }
        const ttl = intFlag('--ttl-seconds', take(flags, '--ttl-seconds'), 3600, 1);
        const cfg = config(flags);
        out(await new JwtVerifier(cfg.jwtSecret).sign(user, ttl));
        return 0;
      }
      case 'probe':
        return await runProbe(flags, out, err);
      case 'inspect':
        return await inspect(positionals[1], flags, out, err);
      case 'demo':
        return await demo(flags, out, err);
      case undefined:
        out(USAGE);
        return 2;
      default:
        err(`tracewire: unknown command "${cmd}"\n\n${USAGE}`);
        return 2;
    }
  } catch (e) {
    if (e instanceof TracewireError) {
      err(`tracewire: ${e.code}: ${e.message}`);
      return 2;
    }
    throw e;
  }
}

/**
 * Warn about `TRACEWIRE_*` environment variables that are no setting (a typo
 * there is otherwise silent), as `WARN config:` lines on stderr unless the
 * log level is error or silent.
 */
function warnUnknownEnv(flags: Record<string, string>, err: Out): void {
  const warnings = unknownEnvWarnings(process.env);
  if (warnings.length === 0) return;
  const level = flags['--log-level'] ?? process.env.TRACEWIRE_LOG_LEVEL ?? 'info';
  const diag = new Diag((['debug', 'info', 'warn', 'error', 'silent'].includes(level) ? level : 'info') as LogLevel, err);
  for (const w of warnings) diag.log('warn', 'config', w);
}

function take(flags: Record<string, string>, name: string): string | undefined {
  const v = flags[name];
  delete flags[name];
  return v;
}

async function serve(flags: Record<string, string>, out: Out, err: Out): Promise<number> {
  const cfg = config(flags);
  const { listen, otlpListen, ...rest } = cfg;
  // Verdicts given while shutting down are summarised on exit (in-flight runs become "interrupted").
  let stopping = false;
  const atShutdown = new Map<string, number>();
  const tw = new Tracewire({
    ...rest,
    onVerdict: (r) => {
      if (stopping && r.judgement) atShutdown.set(r.judgement.verdict, (atShutdown.get(r.judgement.verdict) ?? 0) + 1);
    },
  });
  // The signal handlers are there before the listeners open: a SIGTERM while start-up finishes waits for it, then shuts down.
  const starting = startSidecar(tw, listen, otlpListen);
  const stopped = untilSignal(async (signal) => {
    if (cfg.logLevel !== 'silent') out(`tracewire: ${signal}, shutting down (bound ${cfg.shutdownTimeoutMillis} ms)`);
    stopping = true;
    const started = await starting.catch(() => undefined);
    if (started !== undefined) await started.close();
    else await tw.close();
    if (cfg.logLevel !== 'silent') {
      const judged = [...atShutdown].map(([v, n]) => `${n} ${v}`).join(', ') || 'none';
      out(`tracewire: stopped; runs judged at shutdown: ${judged}`);
    }
  }, cfg.shutdownTimeoutMillis, err);
  let sc: Sidecar;
  try {
    sc = await starting;
  } catch (e) {
    stopped.cancel();
    await tw.close();
    throw e;
  }
  if (cfg.logLevel !== 'silent' && !stopping) {
    out(`tracewire ${VERSION} serve (${cfg.mode} mode)\n${describeConfig(cfg)}`);
    out(`tracewire listening on ${sc.publicUrl} (WebSocket ${sc.publicUrl.replace(/^http/, 'ws')}/v1/events, /metrics, /api/runs, /inspector)`);
    out(`tracewire OTLP/HTTP receiver on ${sc.otlpUrl}/v1/traces`);
  }
  await stopped;
  return 0;
}

/**
 * Wait for SIGTERM/SIGINT, run `stop` within `boundMillis` (+1 s), then resolve. A second signal exits at once.
 * `cancel()` takes the handlers off (start-up failed: the process exits by itself).
 */
function untilSignal(stop: (signal: string) => Promise<void>, boundMillis: number, err: Out): Promise<void> & { cancel(): void } {
  let cancel = (): void => undefined;
  const p = new Promise<void>((resolve) => {
    let stopping = false;
    const on = (signal: NodeJS.Signals): void => {
      if (stopping) {
        err(`tracewire: second ${signal}, exiting now`);
        process.exit(130);
      }
      stopping = true;
      const hard = setTimeout(() => {
        err(`tracewire: shutdown did not finish within ${boundMillis + 1000} ms, exiting`);
        process.exit(1);
      }, boundMillis + 1000);
      hard.unref();
      stop(signal).then(
        () => {
          process.off('SIGTERM', on);
          process.off('SIGINT', on);
          resolve();
        },
        (e: unknown) => {
          err(`tracewire: shutdown failed: ${String(e)}`);
          process.exit(1);
        },
      );
    };
    process.on('SIGTERM', on);
    process.on('SIGINT', on);
    cancel = () => {
      process.off('SIGTERM', on);
      process.off('SIGINT', on);
    };
  });
  return Object.assign(p, { cancel: () => cancel() });
}

async function runProbe(flags: Record<string, string>, out: Out, err: Out): Promise<number> {
  const url = take(flags, '--url') ?? 'http://127.0.0.1:8080';
  const otlpUrl = take(flags, '--otlp-url') ?? 'http://127.0.0.1:4318';
  const timeout = intFlag('--timeout-ms', take(flags, '--timeout-ms'), 10_000, 1);
  const cfg = config(flags);
  const r = await probe({ url, otlpUrl, jwtSecret: cfg.jwtSecret, otlpToken: cfg.otlpToken || undefined, timeoutMillis: timeout });
  const seen = r.received.map((e) => `${e.seq}:${e.type}`).join(' ');
  if (r.ok) {
    out(`probe ok: run ${r.runId} delivered all 5 events in order in ${r.millis} ms (${seen})`);
    return 0;
  }
  err(`probe FAILED: ${r.problem} (run ${r.runId}; received: ${seen || 'nothing'})`);
  return 1;
}

async function inspect(runId: string | undefined, flags: Record<string, string>, out: Out, err: Out): Promise<number> {
  const base = (take(flags, '--url') ?? 'http://127.0.0.1:8080').replace(/\/$/, '');
  const token = take(flags, '--api-token') ?? process.env.TRACEWIRE_API_TOKEN;
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  if (runId === undefined) {
    const q = new URLSearchParams();
    for (const k of ['verdict', 'agent', 'user', 'limit', 'since']) {
      const v = take(flags, `--${k}`);
      if (v !== undefined) q.set(k, v);
    }
    const res = await fetch(`${base}/api/runs?${q}`, { headers });
    const body = (await res.json()) as { runs?: Array<Record<string, unknown>>; code?: string; message?: string };
    if (!res.ok) {
      err(`tracewire inspect: ${res.status} ${body.code}: ${body.message}`);
      return 1;
    }
    for (const r of body.runs ?? []) {
      out(`${r.started_at}  ${String(r.verdict ?? r.status).padEnd(15)} ${String(r.reason ?? '').padEnd(14)} ${String(r.agent).padEnd(16)} ${r.run_id}`);
      out(`    ${r.explanation}`);
    }
    if ((body.runs ?? []).length === 0) out('no runs match');
    return 0;
  }
  // The run's timeline comes a page of events at a time: follow next_cursor to its end.
  let cursor: string | null = null;
  for (let page = 0; page === 0 || cursor !== null; page++) {
    const res = await fetch(`${base}/api/runs/${encodeURIComponent(runId)}${cursor !== null ? `?cursor=${encodeURIComponent(cursor)}` : ''}`, { headers });
    const r = (await res.json()) as Record<string, unknown> & { timeline?: Array<Record<string, unknown>>; next_cursor?: string | null };
    if (!res.ok) {
      err(`tracewire inspect: ${res.status} ${r.code}: ${r.message}`);
      return 1;
    }
    if (page === 0) {
      out(`run ${r.run_id}  agent ${r.agent}  user ${r.user}  verdict ${r.verdict ?? r.status}${r.reason ? ` (${r.reason})` : ''}`);
      out(`  ${r.explanation}`);
      if (r.trace_url) out(`  trace: ${r.trace_url}`);
    }
    for (const t of r.timeline ?? []) {
      if (t.what === 'event') {
        out(`  ${t.at}  event #${String(t.seq).padStart(2)} ${String(t.type).padEnd(16)} ${String(t.outcome).padEnd(9)} ${t.reason ?? ''}${t.connections ? ` (${t.connections} connection${t.connections === 1 ? '' : 's'})` : ''}`);
      } else {
        out(`  ${t.at}  ${t.what === 'span_start' ? 'start' : 'end  '} ${String(t.kind).padEnd(8)} ${t.name ?? ''}${t.error ? `  error: ${t.error}` : ''}`);
      }
    }
    const next = r.next_cursor ?? null;
    if (next !== null && next === cursor) {
      err(`tracewire inspect: the server gave the same page cursor twice (${next}); stopping`);
      return 1;
    }
    cursor = next;
  }
  return 0;
}

async function demo(flags: Record<string, string>, out: Out, err: Out): Promise<number> {
  const runs = intFlag('--runs', take(flags, '--runs'), 1);
  const interval = intFlag('--interval-ms', take(flags, '--interval-ms'), 250);
  const failUser = take(flags, '--fail-user');
  let offlineUser = take(flags, '--offline-user');
  const quietFlag = take(flags, '--quiet');
  const quiet = quietFlag !== undefined && quietFlag !== 'false';
  const users = intFlag('--users', take(flags, '--users'), runs === 0 ? 3 : 1, 1);
  const stepMillis = intFlag('--step-ms', take(flags, '--step-ms'), 20);
  if (runs === 0 && offlineUser === undefined) offlineUser = 'u-offline';
  flags['--grace-ms'] ??= process.env.TRACEWIRE_GRACE_MS ?? '300';
  const cfg = config(flags);
  const { startDemo } = await import('../demo/demoTraffic.js');
  const d = await startDemo({ config: cfg, runs, intervalMillis: interval, users, failUser, offlineUser, stepMillis, print: out, quiet });
  // Whatever happens below, the sidecar stops and the process can exit.
  try {
    out(`tracewire demo listening on ${d.sidecar.publicUrl}`);
    if (!quiet) out(`a client of u-1 is connected; it receives:`);
    if (runs === 0) {
      out(`runs, verdicts and each event's fate: ${d.sidecar.publicUrl}/inspector (Ctrl-C stops)`);
      await untilSignal(() => d.stop(), cfg.shutdownTimeoutMillis, err);
      return 0;
    }
    await d.finished;
    // The demo's own sidecar takes the configured --api-token / TRACEWIRE_API_TOKEN.
    const headers: Record<string, string> = cfg.apiToken !== '' ? { authorization: `Bearer ${cfg.apiToken}` } : {};
    const res = await fetch(`${d.sidecar.publicUrl}/api/runs?limit=500`, { headers });
    const body = (await res.json()) as { runs?: Array<{ run_id: string; user: string | null; verdict: string | null; explanation: string }>; code?: string; message?: string };
    if (!res.ok || !Array.isArray(body.runs)) {
      err(`tracewire demo: the runs API answered ${res.status} ${body.code}: ${body.message}`);
      return 1;
    }
    out('');
    out('verdicts:');
    for (const r of [...body.runs].reverse()) out(`  ${String(r.user ?? '(no user)').padEnd(10)} ${String(r.verdict).padEnd(15)} ${r.explanation}`);
    // This sidecar stops now: its inspector would be gone before anyone opened it.
    out('(tracewire demo --runs 0 keeps a sidecar with demo traffic running, to open its /inspector)');
    return 0;
  } finally {
    await d.stop();
  }
}
