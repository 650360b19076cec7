import { TracewireError } from '../errors/errors.js';

/** A sidecar's id on the broker (`--instance-id`, also the channel prefix's form): what other sidecars' messages are checked against. */
export const INSTANCE_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/**
 * The one config resolver: for each option, the command-line flag wins, then
 * the `TRACEWIRE_*` environment variable, then the default. Every value is
 * validated once at start-up; the result is frozen and can be printed with
 * secrets hidden.
 */

type Kind = 'string' | 'secret' | 'hostport' | 'int' | 'enum' | 'bool' | 'brokerUrl' | 'instanceId';

interface OptionSpec {
  readonly key: keyof TracewireConfig;
  readonly flag: string;
  readonly env: string;
  readonly kind: Kind;
  readonly default: string;
  readonly doc: string;
  readonly values?: readonly string[];
  readonly min?: number;
}

export interface HostPort {
  readonly host: string;
  readonly port: number;
}

export interface TracewireConfig {
  /** Public listener: WebSocket `/v1/events`, `/metrics`, runs API, inspector. */
  readonly listen: HostPort;
  /** OTLP/HTTP listener (`POST /v1/traces`); port 0 disables it in `serve`. */
  readonly otlpListen: HostPort;
  readonly jwtSecret: string;
  readonly mode: 'emit' | 'audit';
  readonly graceMillis: number;
  readonly runTimeoutMillis: number;
  readonly orphanHoldMillis: number;
  readonly maxOrphanSpans: number;
  readonly maxInFlightRuns: number;
  readonly maxSpansPerRun: number;
  readonly maxTraces: number;
  readonly maxSpansInFlight: number;
  readonly replayRetentionMillis: number;
  readonly replayMaxEventsPerRun: number;
  readonly replayMaxBytesPerRun: number;
  readonly replayMaxTotalBytes: number;
  readonly maxHeldEvents: number;
  readonly maxHeldBytes: number;
  readonly wsMaxBufferedBytes: number;
  readonly wsCloseGraceMillis: number;
  readonly wsHeartbeatMillis: number;
  readonly wsMaxConnections: number;
  readonly otlpMaxBodyBytes: number;
  readonly otlpMaxSpansPerRequest: number;
  readonly otlpMaxConcurrentRequests: number;
  readonly otlpToken: string;
  readonly apiToken: string;
  readonly runsMaxCount: number;
  readonly runsMaxBytes: number;
  readonly runsMaxAgeMillis: number;
  readonly maxAgentLabels: number;
  readonly shutdownTimeoutMillis: number;
  readonly traceUrlTemplate: string;
  readonly logLevel: 'debug' | 'info' | 'warn' | 'error' | 'silent';
  /** Redis URL of the fan-out broker (several sidecars); empty: one sidecar, no broker. */
  readonly brokerUrl: string;
  /** This sidecar's id on the broker; empty: `<hostname>-<pid>-<random>`. */
  readonly instanceId: string;
  readonly brokerPrefix: string;
  readonly brokerPresenceMillis: number;
  readonly brokerReportTimeoutMillis: number;
  readonly brokerMaxPending: number;
  readonly brokerMaxRemoteUsers: number;
}

export const DEV_JWT_SECRET = 'tracewire-dev-secret-change-me';

export const OPTIONS: readonly OptionSpec[] = [
  { key: 'listen', flag: '--listen', env: 'TRACEWIRE_LISTEN', kind: 'hostport', default: '127.0.0.1:8080', doc: 'public listener: WebSocket /v1/events, /metrics, /api/runs, /inspector' },
  { key: 'otlpListen', flag: '--otlp-listen', env: 'TRACEWIRE_OTLP_LISTEN', kind: 'hostport', default: '127.0.0.1:4318', doc: 'OTLP/HTTP receiver (POST /v1/traces), internal; port 0 picks a free port' },
  { key: 'jwtSecret', flag: '--jwt-secret', env: 'TRACEWIRE_JWT_SECRET', kind: 'secret', default: DEV_JWT_SECRET, doc: 'HS256 secret for client tokens; the default is refused off loopback' },
  { key: 'mode', flag: '--mode', env: 'TRACEWIRE_MODE', kind: 'enum', values: ['emit', 'audit'], default: 'emit', doc: 'emit: deliver events; audit: judge a backend that delivers its own from agent.event span events' },
  { key: 'graceMillis', flag: '--grace-ms', env: 'TRACEWIRE_GRACE_MS', kind: 'int', min: 0, default: '2000', doc: 'wait after a run ends before its verdict' },
  { key: 'runTimeoutMillis', flag: '--run-timeout-ms', env: 'TRACEWIRE_RUN_TIMEOUT_MS', kind: 'int', min: 1, default: '600000', doc: 'a run whose top-level agent span has not ended by then is abandoned' },
  { key: 'orphanHoldMillis', flag: '--orphan-hold-ms', env: 'TRACEWIRE_ORPHAN_HOLD_MS', kind: 'int', min: 0, default: '10000', doc: 'how long spans whose ancestors have not arrived are held' },
  { key: 'maxOrphanSpans', flag: '--max-orphan-spans', env: 'TRACEWIRE_MAX_ORPHAN_SPANS', kind: 'int', min: 1, default: '50000', doc: 'held spans across all traces; the oldest are given up past it' },
  { key: 'maxInFlightRuns', flag: '--max-runs', env: 'TRACEWIRE_MAX_RUNS', kind: 'int', min: 1, default: '200000', doc: 'in-flight runs; the oldest is evicted past it' },
  { key: 'maxSpansPerRun', flag: '--max-spans-per-run', env: 'TRACEWIRE_MAX_SPANS_PER_RUN', kind: 'int', min: 1, default: '10000', doc: 'spans kept per trace; further spans are dropped (counted)' },
  { key: 'maxTraces', flag: '--max-traces', env: 'TRACEWIRE_MAX_TRACES', kind: 'int', min: 1, default: '400000', doc: 'traces tracked at once (with or without runs)' },
  { key: 'maxSpansInFlight', flag: '--max-spans', env: 'TRACEWIRE_MAX_SPANS', kind: 'int', min: 1, default: '1000000', doc: 'spans kept across all traces of a span source (about 480 bytes each); past it the oldest traces are given up, those kept only for late spans first' },
  { key: 'replayRetentionMillis', flag: '--replay-retention-ms', env: 'TRACEWIRE_REPLAY_RETENTION_MS', kind: 'int', min: 0, default: '60000', doc: 'how long after a run ends its events stay resumable, and how long events wait for a user with no connection' },
  { key: 'replayMaxEventsPerRun', flag: '--replay-max-events', env: 'TRACEWIRE_REPLAY_MAX_EVENTS', kind: 'int', min: 0, default: '1000', doc: 'resumable events kept per run' },
  { key: 'replayMaxBytesPerRun', flag: '--replay-max-bytes', env: 'TRACEWIRE_REPLAY_MAX_BYTES', kind: 'int', min: 0, default: '1048576', doc: 'resumable bytes kept per run' },
  { key: 'replayMaxTotalBytes', flag: '--replay-max-total-bytes', env: 'TRACEWIRE_REPLAY_MAX_TOTAL_BYTES', kind: 'int', min: 0, default: '268435456', doc: 'resumable bytes across all runs; the oldest runs are dropped past it' },
  { key: 'maxHeldEvents', flag: '--max-held-events', env: 'TRACEWIRE_MAX_HELD_EVENTS', kind: 'int', min: 0, default: '200000', doc: 'events held for users with no connection, across all users (oldest dropped as no_subscriber)' },
  { key: 'maxHeldBytes', flag: '--max-held-bytes', env: 'TRACEWIRE_MAX_HELD_BYTES', kind: 'int', min: 0, default: '67108864', doc: 'bytes of held events across all users (their frames, estimated from the events: a held event is serialised only when a connection takes it)' },
  { key: 'wsMaxBufferedBytes', flag: '--ws-max-buffered-bytes', env: 'TRACEWIRE_WS_MAX_BUFFERED_BYTES', kind: 'int', min: 1024, default: '4194304', doc: 'unsent bytes per connection before it is closed (4408)' },
  { key: 'wsCloseGraceMillis', flag: '--ws-close-grace-ms', env: 'TRACEWIRE_WS_CLOSE_GRACE_MS', kind: 'int', min: 0, default: '1000', doc: 'after a 4408 backpressure close, how long the close handshake may take before the socket is destroyed' },
  { key: 'wsHeartbeatMillis', flag: '--ws-heartbeat-ms', env: 'TRACEWIRE_WS_HEARTBEAT_MS', kind: 'int', min: 0, default: '30000', doc: 'ping interval; a connection with no pong by the next ping is terminated; 0 disables' },
  { key: 'wsMaxConnections', flag: '--ws-max-connections', env: 'TRACEWIRE_WS_MAX_CONNECTIONS', kind: 'int', min: 1, default: '20000', doc: 'open WebSocket connections' },
  { key: 'otlpMaxBodyBytes', flag: '--otlp-max-body-bytes', env: 'TRACEWIRE_OTLP_MAX_BODY_BYTES', kind: 'int', min: 1024, default: '8388608', doc: 'request body limit, compressed and decompressed' },
  { key: 'otlpMaxSpansPerRequest', flag: '--otlp-max-spans', env: 'TRACEWIRE_OTLP_MAX_SPANS', kind: 'int', min: 1, default: '20000', doc: 'spans per request' },
  { key: 'otlpMaxConcurrentRequests', flag: '--otlp-max-concurrent', env: 'TRACEWIRE_OTLP_MAX_CONCURRENT', kind: 'int', min: 1, default: '64', doc: 'requests being read at once; more get 503 with Retry-After' },
  { key: 'otlpToken', flag: '--otlp-token', env: 'TRACEWIRE_OTLP_TOKEN', kind: 'secret', default: '', doc: 'bearer token required on /v1/traces; empty: none' },
  { key: 'apiToken', flag: '--api-token', env: 'TRACEWIRE_API_TOKEN', kind: 'secret', default: '', doc: 'bearer token required on /api/runs and /inspector; empty: none' },
  { key: 'runsMaxCount', flag: '--runs-max-count', env: 'TRACEWIRE_RUNS_MAX_COUNT', kind: 'int', min: 1, default: '10000', doc: 'judged runs kept for the runs API' },
  { key: 'runsMaxBytes', flag: '--runs-max-bytes', env: 'TRACEWIRE_RUNS_MAX_BYTES', kind: 'int', min: 65536, default: '268435456', doc: 'estimated bytes of judged runs kept for the runs API (512 per run, 240 per event, plus the strings they keep); the earliest judged are dropped past it' },
  { key: 'runsMaxAgeMillis', flag: '--runs-max-age-ms', env: 'TRACEWIRE_RUNS_MAX_AGE_MS', kind: 'int', min: 1, default: '3600000', doc: 'how long judged runs are kept for the runs API' },
  { key: 'maxAgentLabels', flag: '--max-agent-labels', env: 'TRACEWIRE_MAX_AGENT_LABELS', kind: 'int', min: 1, default: '50', doc: 'distinct agent label values on metrics; later agents are "other"' },
  { key: 'shutdownTimeoutMillis', flag: '--shutdown-timeout-ms', env: 'TRACEWIRE_SHUTDOWN_TIMEOUT_MS', kind: 'int', min: 0, default: '10000', doc: 'bound on graceful shutdown' },
  { key: 'traceUrlTemplate', flag: '--trace-url', env: 'TRACEWIRE_TRACE_URL', kind: 'string', default: '', doc: 'link to a trace backend, {trace_id} is replaced (e.g. a Grafana Tempo explore URL)' },
  { key: 'brokerUrl', flag: '--broker-url', env: 'TRACEWIRE_BROKER_URL', kind: 'brokerUrl', default: '', doc: 'Redis pub/sub that fans events out across sidecars (redis://[user:password@]host:port, rediss://, unix:///path); empty: a single sidecar' },
  { key: 'instanceId', flag: '--instance-id', env: 'TRACEWIRE_INSTANCE_ID', kind: 'instanceId', default: '', doc: 'this sidecar\'s id on the broker (1-128 of A-Z a-z 0-9 . _ : -), unique per sidecar; empty: <hostname>-<pid>-<random>' },
  { key: 'brokerPrefix', flag: '--broker-prefix', env: 'TRACEWIRE_BROKER_PREFIX', kind: 'instanceId', default: 'tracewire', doc: 'channel prefix on the broker: the sidecars of one deployment share it' },
  { key: 'brokerPresenceMillis', flag: '--broker-presence-ms', env: 'TRACEWIRE_BROKER_PRESENCE_MS', kind: 'int', min: 100, default: '5000', doc: 'how often a sidecar announces its connected users (and that it is alive); a sidecar not heard from for five of these counts as gone, and one that hears none of its own back for three opens new broker connections' },
  { key: 'brokerReportTimeoutMillis', flag: '--broker-report-timeout-ms', env: 'TRACEWIRE_BROKER_REPORT_TIMEOUT_MS', kind: 'int', min: 100, default: '1500', doc: 'an event sent to another sidecar whose outcome has not come back by then is dropped as broker_unconfirmed (keep it under --grace-ms, so the verdict sees the outcome)' },
  { key: 'brokerMaxPending', flag: '--broker-max-pending', env: 'TRACEWIRE_BROKER_MAX_PENDING', kind: 'int', min: 1, default: '100000', doc: 'events sent to other sidecars awaiting their outcome; past it, further ones are dropped as broker_unconfirmed' },
  { key: 'brokerMaxRemoteUsers', flag: '--broker-max-remote-users', env: 'TRACEWIRE_BROKER_MAX_REMOTE_USERS', kind: 'int', min: 1, default: '500000', doc: 'users connected to other sidecars that this one tracks (one entry per user and sidecar); announcements past it are ignored' },
  { key: 'logLevel', flag: '--log-level', env: 'TRACEWIRE_LOG_LEVEL', kind: 'enum', values: ['debug', 'info', 'warn', 'error', 'silent'], default: 'info', doc: 'log verbosity' },
];

function parseHostPort(raw: string, name: string): HostPort {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(raw);
  if (!m) throw new TracewireError('TW_CONFIG_INVALID', `${name}="${raw}" is not HOST:PORT`);
  const port = Number(m[3]);
  if (port > 65535) throw new TracewireError('TW_CONFIG_INVALID', `${name} port ${port} is over 65535`);
  const host = m[1] ?? m[2] ?? '';
  return { host: host === '' ? '0.0.0.0' : host, port };
}

/** A listen host that only loopback can reach: `localhost`, `::1` or a 127.x.x.x address (not a name that merely starts with `127.`). */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || isLoopbackAddress(host);
}

/** A socket address on the loopback interface (127.0.0.0/8, ::1, or 127.x.x.x mapped into IPv6). */
export function isLoopbackAddress(addr: string): boolean {
  return addr === '::1' || /^(::ffff:)?127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/i.test(addr);
}

export interface ResolveInput {
  /** Parsed flags, by flag name without dashes (`jwt-secret`) or full (`--jwt-secret`). */
  readonly flags?: Readonly<Record<string, string | undefined>>;
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Programmatic overrides (library use and tests); same precedence as flags. */
  readonly overrides?: Partial<Record<keyof TracewireConfig, unknown>>;
}

export function resolveConfig(input: ResolveInput = {}): TracewireConfig {
  const flags = input.flags ?? {};
  const env = input.env ?? {};
  const out: Record<string, unknown> = {};
  for (const spec of OPTIONS) {
    const bare = spec.flag.slice(2);
    const override = input.overrides?.[spec.key];
    if (override !== undefined && typeof override !== 'string') {
      // Library options: numbers are checked as a flag's would be (other kinds are taken as given).
      if (spec.kind === 'int') checkInt(spec, override, spec.flag);
      out[spec.key] = override;
      continue;
    }
    const raw = (override as string | undefined) ?? flags[spec.flag] ?? flags[bare] ?? env[spec.env] ?? spec.default;
    const from = override !== undefined || flags[spec.flag] !== undefined || flags[bare] !== undefined ? spec.flag : env[spec.env] !== undefined ? spec.env : 'default';
    out[spec.key] = parseValue(spec, raw, from);
  }
  const cfg = out as unknown as TracewireConfig;
  if (cfg.jwtSecret === DEV_JWT_SECRET && !isLoopback(cfg.listen.host)) {
    throw new TracewireError('TW_CONFIG_INVALID', `--jwt-secret / TRACEWIRE_JWT_SECRET must be set when listening on ${cfg.listen.host} (the built-in dev secret is only for loopback)`);
  }
  if (cfg.jwtSecret.length < 16) {
    throw new TracewireError('TW_CONFIG_INVALID', '--jwt-secret must be at least 16 characters');
  }
  return Object.freeze(cfg);
}

function parseValue(spec: OptionSpec, raw: string, from: string): unknown {
  const name = from === 'default' ? spec.flag : from;
  switch (spec.kind) {
    case 'hostport':
      return Object.freeze(parseHostPort(raw, name));
    case 'int': {
      if (!/^\d+$/.test(raw.trim())) throw new TracewireError('TW_CONFIG_INVALID', `${name}="${raw}" is not a whole number`);
      return checkInt(spec, Number(raw), name);
    }
    case 'enum':
      if (!spec.values!.includes(raw)) throw new TracewireError('TW_CONFIG_INVALID', `${name}="${raw}" is not one of ${spec.values!.join(', ')}`);
      return raw;
    case 'bool':
      return raw === 'true' || raw === '1';
    case 'brokerUrl':
      return checkBrokerUrl(raw, name);
    case 'instanceId':
      if (raw !== '' && !INSTANCE_ID.test(raw)) throw new TracewireError('TW_CONFIG_INVALID', `${name}="${raw}" must be 1-128 of A-Z a-z 0-9 . _ : -`);
      if (raw === '' && spec.key === 'brokerPrefix') throw new TracewireError('TW_CONFIG_INVALID', `${name} must not be empty`);
      return raw;
    default:
      return raw;
  }
}

/**
 * What the configured bounds can hold in memory when all of them are
 * reached, in bytes, by part (measured per entry, see docs/operations.md
 * "Sizing a sidecar"): runs in flight (about 512 B each besides their
 * spans) and their spans (about 480 B each, events included), OTLP traces
 * kept for late spans (about 400 B), and the byte bounds of held events, the
 * resume window and the judged runs. Connection buffers are left out: they
 * are bounded per connection and drain or close. One span source (in-process
 * or OTLP) is counted: each has its own run, span and trace bounds.
 */
export function boundsMemory(cfg: TracewireConfig): { total: number; parts: Array<[string, string, number]> } {
  const parts: Array<[string, string, number]> = [
    ['runs in flight', '--max-runs', cfg.maxInFlightRuns * RUN_IN_FLIGHT_BYTES],
    ['spans in flight', '--max-spans', cfg.maxSpansInFlight * SPAN_IN_FLIGHT_BYTES],
    ['traces kept', '--max-traces', cfg.maxTraces * TRACE_KEPT_BYTES],
    ['held events', '--max-held-bytes', cfg.maxHeldBytes],
    ['resume window', '--replay-max-total-bytes', cfg.replayMaxTotalBytes],
    ['judged runs', '--runs-max-bytes', cfg.runsMaxBytes],
  ];
  return { total: parts.reduce((a, p) => a + p[2], 0), parts };
}
const RUN_IN_FLIGHT_BYTES = 512;
const SPAN_IN_FLIGHT_BYTES = 480;
const TRACE_KEPT_BYTES = 400;

/**
 * A warning when the bounds can hold more than 90% of the V8 heap limit
 * (`heapLimitBytes`, from `v8.getHeapStatistics().heap_size_limit`): the heap
 * would run out before the bounds give state up. Undefined when they fit.
 */
export function boundsMemoryWarning(cfg: TracewireConfig, heapLimitBytes: number): string | undefined {
  const { total, parts } = boundsMemory(cfg);
  if (total <= heapLimitBytes * 0.9) return undefined;
  const mib = (n: number): string => String(Math.round(n / 2 ** 20));
  return (
    `the configured bounds can hold about ${mib(total)} MiB (${parts.map(([what, , n]) => `${what} ${mib(n)}`).join(', ')}), ` +
    `more than 90% of the heap limit (${mib(heapLimitBytes)} MiB): lower ${parts.map(([, flag]) => flag).join(', ')}, ` +
    'or raise the heap limit (NODE_OPTIONS=--max-old-space-size=<MiB>)'
  );
}

/** A whole number at or over the option's minimum (`name`: where it came from, for the message). */
function checkInt(spec: OptionSpec, v: unknown, name: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new TracewireError('TW_CONFIG_INVALID', `${name}=${String(v)} is not a whole number`);
  if (spec.min !== undefined && v < spec.min) throw new TracewireError('TW_CONFIG_INVALID', `${name}=${v} is under its minimum ${spec.min}`);
  return v;
}

/** A broker URL: empty, `redis://` or `rediss://` with a host, or `unix://` with a socket path. */
function checkBrokerUrl(raw: string, name: string): string {
  if (raw === '') return raw;
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new TracewireError('TW_CONFIG_INVALID', `${name} is not a URL (expected redis://host:port, rediss://host:port or unix:///path)`);
  }
  if (u.protocol === 'unix:' ? u.pathname === '' || u.pathname === '/' : !['redis:', 'rediss:'].includes(u.protocol) || u.hostname === '') {
    throw new TracewireError('TW_CONFIG_INVALID', `${name} must be redis://host:port, rediss://host:port or unix:///path (got ${u.protocol}//${u.host}${u.pathname})`);
  }
  return raw;
}

/** A URL with its password (and user name) shown as `***`. */
export function redactUrl(raw: string): string {
  try {
    const u = new URL(raw);
    if (u.password !== '') u.password = '***';
    if (u.username !== '') u.username = '***';
    return u.toString();
  } catch {
    return '***';
  }
}

/** The resolved configuration as lines, secrets replaced by `***` (or `(unset)`). */
export function describeConfig(cfg: TracewireConfig): string {
  const lines: string[] = [];
  for (const spec of OPTIONS) {
    const v = cfg[spec.key];
    let shown: string;
    if (spec.kind === 'secret') shown = v === '' ? '(unset)' : v === DEV_JWT_SECRET ? '*** (built-in dev secret)' : '***';
    else if (spec.kind === 'brokerUrl') shown = v === '' ? '(unset)' : redactUrl(v as string);
    else if (spec.kind === 'hostport') shown = `${(v as HostPort).host}:${(v as HostPort).port}`;
    else shown = String(v === '' ? '(unset)' : v);
    lines.push(`  ${spec.flag.padEnd(26)} ${shown}`);
  }
  return lines.join('\n');
}

export interface ParsedArgs {
  /** Flags by full name (`--listen`); a flag given without a value is `'true'`. */
  readonly flags: Record<string, string>;
  readonly positionals: string[];
  /** Flags given without a value (`--api-token` last, or followed by another flag). */
  readonly bare: Set<string>;
}

/**
 * Parse `--flag value` and `--flag=value` pairs; positional arguments are
 * returned apart. A flag in `booleans` never takes the next argument as its
 * value (`--quiet RUN_ID` leaves `RUN_ID` positional).
 */
export function parseArgs(argv: readonly string[], booleans: ReadonlySet<string> = new Set()): ParsedArgs {
  const flags: Record<string, string> = {};
  const positionals: string[] = [];
  const bare = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      if (eq > 0) {
        flags[a.slice(0, eq)] = a.slice(eq + 1);
        bare.delete(a.slice(0, eq));
      } else if (!booleans.has(a) && i + 1 < argv.length && !argv[i + 1]!.startsWith('--')) {
        flags[a] = argv[++i]!;
        bare.delete(a);
      } else {
        flags[a] = 'true';
        bare.add(a);
      }
    } else positionals.push(a);
  }
  return { flags, positionals, bare };
}

/** What a command takes besides the OPTIONS flags. */
export interface CommandArgs {
  /** Its own flags that take a value. */
  readonly valued?: readonly string[];
  /** Its own flags that take none. */
  readonly booleans?: readonly string[];
  /** Positional arguments after the command name (`inspect RUN_ID`: 1). */
  readonly positionals?: number;
}

/**
 * Refuse, with TW_CONFIG_INVALID, what a command would otherwise silently
 * ignore: a flag that is neither one of OPTIONS nor one of the command's own
 * (naming the closest known flag when there is a near one), a flag that needs
 * a value given without one, and positional arguments the command does not
 * take. `parsed.positionals[0]` is the command.
 */
export function checkArgs(parsed: ParsedArgs, own: CommandArgs): void {
  const cmd = parsed.positionals[0] ?? '';
  const valued = new Set([...OPTIONS.map((o) => o.flag), ...(own.valued ?? [])]);
  const booleans = new Set(own.booleans ?? []);
  const known = [...valued, ...booleans];
  for (const flag of Object.keys(parsed.flags)) {
    if (!valued.has(flag) && !booleans.has(flag)) throw unknownOption(flag, cmd, known);
    if (valued.has(flag) && parsed.bare.has(flag)) throw new TracewireError('TW_CONFIG_INVALID', `${flag} needs a value (${flag} VALUE or ${flag}=VALUE)`);
  }
  const extra = parsed.positionals.slice(1 + (own.positionals ?? 0));
  for (const a of extra) {
    if (/^-[^\d]/.test(a)) throw unknownOption(a, cmd, known);
  }
  if (extra.length > 0) {
    throw new TracewireError('TW_CONFIG_INVALID', `unexpected argument${extra.length > 1 ? 's' : ''} ${extra.map((a) => JSON.stringify(a)).join(' ')} for tracewire ${cmd} (see tracewire help)`);
  }
}

function unknownOption(flag: string, cmd: string, known: readonly string[]): TracewireError {
  const near = closest(flag.replace(/^-+/, ''), known.map((k) => k.slice(2)));
  return new TracewireError('TW_CONFIG_INVALID', `unknown option ${flag} for tracewire ${cmd}${near !== undefined ? ` (did you mean --${near}?)` : ''}; see tracewire help`);
}

/**
 * `TRACEWIRE_*` variables that are not settings are read by other tools of the
 * project (bench/ and docker-compose.yml), so no warning for them.
 */
const OTHER_ENV = new Set(['TRACEWIRE_DIST', 'TRACEWIRE_NODE_OPTIONS']);

/**
 * One warning per `TRACEWIRE_*` environment variable that is not a setting
 * (most likely a misspelt one), naming the closest setting when there is a
 * near one. Warnings, not errors: environments carry variables meant for
 * other versions and tools.
 */
export function unknownEnvWarnings(env: Readonly<Record<string, string | undefined>>): string[] {
  const known = OPTIONS.map((o) => o.env);
  const out: string[] = [];
  for (const name of Object.keys(env).sort()) {
    if (!name.toUpperCase().startsWith('TRACEWIRE_') || known.includes(name) || OTHER_ENV.has(name)) continue;
    const near = closest(name.slice('TRACEWIRE_'.length), known.map((k) => k.slice('TRACEWIRE_'.length)));
    out.push(`${name} is not a tracewire setting and is ignored${near !== undefined ? ` (did you mean TRACEWIRE_${near}?)` : ''}`);
  }
  return out;
}

/**
 * The known name nearest to `given` (case, `-` and `_` ignored), when it is
 * near enough to be a typo: at most 1 edit for short names, 2 from 8
 * characters, 3 from 12 (an edit is an insertion, deletion, substitution or
 * swap of adjacent characters), or the only known name that starts with it.
 */
export function closest(given: string, known: readonly string[]): string | undefined {
  const norm = (s: string): string => s.toLowerCase().replace(/_/g, '-');
  const g = norm(given);
  if (g === '') return undefined;
  let best: string | undefined;
  let bestD = Infinity;
  for (const k of known) {
    const d = editDistance(g, norm(k));
    if (d < bestD) {
      bestD = d;
      best = k;
    }
  }
  const allowed = g.length >= 12 ? 3 : g.length >= 8 ? 2 : 1;
  if (best !== undefined && bestD <= allowed) return best;
  const prefixed = known.filter((k) => norm(k).startsWith(g));
  return g.length >= 3 && prefixed.length === 1 ? prefixed[0] : undefined;
}

/** Optimal string alignment distance (Levenshtein plus adjacent swaps). */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, d[i - 2]![j - 2]! + 1);
      d[i]![j] = v;
    }
  }
  return d[a.length]![b.length]!;
}

/**
 * A command's own whole-number flag (`demo --users`, `probe --timeout-ms`),
 * checked as an OPTIONS int is: digits only, at or over `min`; `fallback`
 * when the flag is absent.
 */
export function intFlag(name: string, raw: string | undefined, fallback: number, min = 0): number {
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw.trim())) throw new TracewireError('TW_CONFIG_INVALID', `${name}="${raw}" is not a whole number`);
  const v = Number(raw);
  if (!Number.isSafeInteger(v)) throw new TracewireError('TW_CONFIG_INVALID', `${name}=${raw} is not a whole number`);
  if (v < min) throw new TracewireError('TW_CONFIG_INVALID', `${name}=${v} is under its minimum ${min}`);
  return v;
}
