/**
 * The client of the tracewire.v1 WebSocket protocol, for browsers and Node:
 * it connects with a token, reconnects with backoff after a drop, resumes
 * every run it was following from the last seq it delivered, and hands the
 * application each run's events once and in seq order. No imports: a
 * browser loads this file as it is (`import { TracewireClient } from
 * 'tracewire/client'` through a bundler, or the file itself as a module).
 *
 * What it does with the protocol (README, "WebSocket protocol"):
 * - the token goes in the subprotocol `bearer.<jwt>` (kept out of URLs and
 *   their logs) or in `?access_token=`; a token function is called at every
 *   connect, so a short-lived token is renewed on each reconnect;
 * - per run it keeps the last seq delivered to the application; a reconnect
 *   names them in `?resume=` (as many as fit `maxResumeUrlChars`, the rest in
 *   `resume` frames right after the ack), with `resume_all=1` by default, so
 *   runs that went to another tab meanwhile arrive too;
 * - duplicates (seq at or below the last delivered) are dropped; an event
 *   ahead of the next seq waits until the seqs before it arrive, the server
 *   says they are lost (an error frame with `run_id`, `from_seq`, `to_seq`:
 *   a `gap`), or `gapTimeoutMillis` passes (a `gap` too). The missing seqs
 *   are asked for at once with a `resume` frame (a run first heard of in the
 *   middle, its start gone to another tab, from its start);
 * - acks: after the application's handlers ran, the highest seq per run is
 *   acknowledged (`ack` frames, at most one per run per `ackDelayMillis`);
 * - liveness: an attempt with no `ack` within `connectTimeoutMillis` is
 *   dropped and retried; once open, with no frame from the server for
 *   `pingIntervalMillis` it sends a `ping`, and with none for
 *   `pingTimeoutMillis` more it drops the connection and reconnects (a laptop
 *   that slept leaves a half-open socket);
 * - close codes: a token refused (4401/4402/4403) is retried only when the
 *   token is a function (it may return a fresh one), and a protocol error
 *   (4400, 1009) is not retried: both end in state `closed` with the error.
 *   Everything else (1001 shutdown, 1006, 4408 backpressure, 4409 heartbeat,
 *   4429 too many connections, 1011) reconnects with exponential backoff and
 *   full jitter.
 *
 * Bounded: at most `maxRuns` runs are followed (the least recently active is
 * forgotten first), a run is forgotten `runTtlMillis` after its last event,
 * and at most `maxPendingPerRun` events wait for a missing seq (past it the
 * missing seqs are reported as a gap and skipped).
 */
import { formatMessage, type ErrorCode } from '../errors/codes.js';

export type EventType = 'agent_started' | 'agent_thinking' | 'tool_executing' | 'tool_completed' | 'agent_completed';

/** One lifecycle event, as the server sends it. */
export interface TracewireEvent {
  readonly type: EventType;
  readonly run_id: string;
  readonly trace_id: string;
  readonly span_id: string;
  readonly seq: number;
  readonly ts: string;
  readonly agent?: string;
  readonly conversation_id?: string | null;
  readonly data: Record<string, unknown>;
}

/** An error frame from the server, or the client's own (`TW_CLIENT_*`). */
export interface TracewireClientError {
  readonly code: string;
  readonly message: string;
  /** The connection will not be retried (token refused with a fixed token, protocol error, attempts exhausted). */
  readonly fatal: boolean;
  readonly run_id?: string;
  readonly from_seq?: number;
  readonly to_seq?: number;
  readonly run_ids?: readonly string[];
}

/** Seqs of a run the application will not get (`server`: past the resume window; `timeout`/`overflow`: waited for in vain). */
export interface TracewireGap {
  readonly run_id: string;
  readonly from_seq: number;
  readonly to_seq: number;
  readonly cause: 'server' | 'timeout' | 'overflow';
}

export type ClientState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface ClientStatus {
  readonly state: ClientState;
  /** Set in `open`: the server's ack. */
  readonly connectionId?: number;
  readonly user?: string;
  /** Set in `reconnecting`: the wait before the next attempt, and its number (1 for the first retry). */
  readonly retryInMillis?: number;
  readonly attempt?: number;
  /** Set when the connection ended: its close code and reason. */
  readonly closeCode?: number;
  readonly closeReason?: string;
}

/** A handler property checked bivariantly (as methods are), so the DOM's and the `ws` package's event types both fit. */
type Handler<E> = { bivariant(ev: E): void }['bivariant'];

/** The part of the WebSocket interface the client uses (the browser's, Node 22's global, or the `ws` package's). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  /** The `ws` package's: destroy the socket without a close handshake. */
  terminate?(): void;
  onopen: Handler<never> | null;
  onmessage: Handler<{ data: unknown }> | null;
  onclose: Handler<{ code: number; reason: string }> | null;
  onerror: Handler<never> | null;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface TracewireClientOptions {
  /** `ws(s)://host:port/v1/events`. */
  readonly url: string;
  /** The JWT, or a function giving one (called at every connect). */
  readonly token: string | (() => string | Promise<string>);
  /** How the token is sent: the subprotocol `bearer.<jwt>` (default) or `?access_token=`. */
  readonly auth?: 'subprotocol' | 'query';
  /** Narrow the connection to one conversation. */
  readonly conversationId?: string;
  /** Ask for runs this client never heard of (`resume_all=1`): on reconnects (default), always, or never. */
  readonly resumeAll?: 'reconnect' | 'always' | 'never';
  /** The WebSocket constructor; default `globalThis.WebSocket` (in Node 20, pass the `ws` package's). */
  readonly WebSocket?: WebSocketConstructor;
  /** Reconnect after a drop (default true). */
  readonly reconnect?: boolean;
  /** First retry after about this long, doubling up to `maxRetryDelayMillis` (full jitter). Default 250. */
  readonly minRetryDelayMillis?: number;
  /** Default 10000. */
  readonly maxRetryDelayMillis?: number;
  /** Attempts in a row before giving up (state `closed`, error `TW_CLIENT_GAVE_UP`). Default: no limit. */
  readonly maxAttempts?: number;
  /** Acknowledge delivered seqs (default true). */
  readonly ack?: boolean;
  /** Acks of a run are coalesced over this long. Default 50. */
  readonly ackDelayMillis?: number;
  /** An attempt with no `ack` from the server within this long is dropped and retried. Default 10000. */
  readonly connectTimeoutMillis?: number;
  /** Send a `ping` after this long with no frame from the server; 0 disables. Default 25000. */
  readonly pingIntervalMillis?: number;
  /** Drop the connection when nothing arrives for this long after a ping. Default 10000. */
  readonly pingTimeoutMillis?: number;
  /** Events ahead of a missing seq are held this long at most, then the gap is skipped. Default 5000. */
  readonly gapTimeoutMillis?: number;
  /** Runs followed (for resume and duplicates). Default 1000. */
  readonly maxRuns?: number;
  /** A run with no event for this long is forgotten. Default 600000 (10 min; the server's window is 60 s after a run ends). */
  readonly runTtlMillis?: number;
  /** Events waiting for a missing seq, per run. Default 1000. */
  readonly maxPendingPerRun?: number;
  /** `?resume=` is kept under this many characters; the other runs go in resume frames. Default 4000. */
  readonly maxResumeUrlChars?: number;
  /**
   * Completed runs are named in a reconnect's resume for this long after their last event (else
   * `resume_all` sends them again, dropped here as duplicates). Set it a few seconds above the
   * server's `--replay-retention-ms` (runs leave its window at its next sweep). Default 65000.
   */
  readonly resumeWindowMillis?: number;
}

interface Handlers {
  event: (ev: TracewireEvent) => void;
  error: (err: TracewireClientError) => void;
  gap: (gap: TracewireGap) => void;
  status: (status: ClientStatus) => void;
}

/** Counters of what the client saw and did. */
export interface ClientStats {
  /** Event frames received (duplicates included). */
  received: number;
  /** Events handed to the application. */
  delivered: number;
  duplicates: number;
  /** Seqs reported as gaps. */
  missed: number;
  /** Connection attempts, and those after the first open. */
  connects: number;
  reconnects: number;
  /** Runs forgotten to `maxRuns` or `runTtlMillis`. */
  forgottenRuns: number;
}

interface RunTrack {
  readonly runId: string;
  /** Last seq handed to the application (0: none yet). */
  last: number;
  /** Events ahead of last + 1, by seq. */
  pending: Map<number, TracewireEvent> | undefined;
  /** Seq ranges the server said are lost, not reached yet. */
  holes: Array<[number, number]> | undefined;
  /** When the oldest pending event started waiting. */
  waitingSince: number;
  lastEventAt: number;
  /** The run's top-level agent_completed was delivered: nothing more will come. */
  done: boolean;
  /** The server said it cannot resume the run (unknown, or past its window): not named again. */
  gone: boolean;
  /** Seq acknowledged / to acknowledge. */
  acked: number;
}

const PROTOCOL = 'tracewire.v1';
/** The server takes at most this many runs per resume frame. */
const RESUME_FRAME_RUNS = 1000;
const OPEN = 1;
const TOKEN_CLOSE_CODES = new Set([4401, 4402, 4403]);
const PROTOCOL_CLOSE_CODES = new Set([4400, 1009]);
/** Close codes the client uses itself (4000–4099 are unused by the server). */
const CLOSE_NO_PONG = 4000;
const CLOSE_NO_ACK = 4001;
/** Longest `?resume=` the client writes: request lines past about 8 KiB are refused by common proxies (Node's limit is 16 KiB of headers). */
const MAX_RESUME_URL_CHARS = 8000;
const noop = (): void => undefined;
const CLOSE_BY_APP = 1000;
/** How long a closed socket may take to finish its close handshake before it is destroyed (Node). */
const CLOSE_GRACE_MILLIS = 1000;

export class TracewireClient {
  readonly stats: ClientStats = { received: 0, delivered: 0, duplicates: 0, missed: 0, connects: 0, reconnects: 0, forgottenRuns: 0 };
  private readonly o: Required<Omit<TracewireClientOptions, 'conversationId' | 'WebSocket' | 'maxAttempts'>> & Pick<TracewireClientOptions, 'conversationId' | 'maxAttempts'>;
  private readonly WS: WebSocketConstructor;
  private readonly handlers: { [K in keyof Handlers]: Set<Handlers[K]> } = { event: new Set(), error: new Set(), gap: new Set(), status: new Set() };
  /** Followed runs, least recently active first (Map order: re-inserted on each event). */
  private readonly runs = new Map<string, RunTrack>();
  private ws: WebSocketLike | undefined;
  private state: ClientState = 'idle';
  /** Each attempt's number: an attempt whose number is no longer current (closed, timed out, superseded) stops where it is. */
  private gen = 0;
  /** Attempts since the last ack (the backoff's exponent and the status's number). */
  private attempt = 0;
  /** Attempts that failed in a row (a drop of an open connection is not one): what maxAttempts bounds. */
  private failures = 0;
  private everOpened = false;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private ackTimer: ReturnType<typeof setTimeout> | undefined;
  private gapTimer: ReturnType<typeof setTimeout> | undefined;
  private watchdog: ReturnType<typeof setTimeout> | undefined;
  private connectStartedAt = 0;
  private lastFrameAt = 0;
  private pingSentAt = 0;
  /** Runs named in `resume` frames sent after the ack of this connection. */
  private resumeFrames: Array<Record<string, number>> = [];
  /** Send `all: true` on the last resume frame (instead of `resume_all=1` in the URL). */
  private allInLastFrame = false;
  private readonly toAck = new Set<RunTrack>();

  constructor(opts: TracewireClientOptions) {
    if (typeof opts?.url !== 'string' || !isWsUrl(opts.url)) throw new TypeError('TracewireClient: url must be a ws:// or wss:// URL');
    if (typeof opts.token !== 'string' && typeof opts.token !== 'function') throw new TypeError('TracewireClient: token must be a string or a function returning one');
    const WS = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (WS === undefined) throw new TypeError('TracewireClient: no WebSocket here; pass one (in Node 20: `WebSocket` from the ws package)');
    this.WS = WS;
    this.o = {
      url: opts.url,
      token: opts.token,
      auth: opts.auth ?? 'subprotocol',
      conversationId: opts.conversationId,
      resumeAll: opts.resumeAll ?? 'reconnect',
      reconnect: opts.reconnect ?? true,
      minRetryDelayMillis: millis(opts.minRetryDelayMillis, 250, 1, 'minRetryDelayMillis'),
      maxRetryDelayMillis: millis(opts.maxRetryDelayMillis, 10_000, 1, 'maxRetryDelayMillis'),
      maxAttempts: opts.maxAttempts === undefined ? undefined : count(opts.maxAttempts, 1, Number.MAX_SAFE_INTEGER, 'maxAttempts'),
      ack: opts.ack ?? true,
      ackDelayMillis: millis(opts.ackDelayMillis, 50, 0, 'ackDelayMillis'),
      connectTimeoutMillis: millis(opts.connectTimeoutMillis, 10_000, 1, 'connectTimeoutMillis'),
      pingIntervalMillis: millis(opts.pingIntervalMillis, 25_000, 0, 'pingIntervalMillis'),
      pingTimeoutMillis: millis(opts.pingTimeoutMillis, 10_000, 1, 'pingTimeoutMillis'),
      gapTimeoutMillis: millis(opts.gapTimeoutMillis, 5_000, 1, 'gapTimeoutMillis'),
      maxRuns: count(opts.maxRuns, 1000, 1_000_000, 'maxRuns'),
      runTtlMillis: millis(opts.runTtlMillis, 600_000, 1, 'runTtlMillis'),
      maxPendingPerRun: count(opts.maxPendingPerRun, 1000, 1_000_000, 'maxPendingPerRun'),
      maxResumeUrlChars: count(opts.maxResumeUrlChars, 4000, MAX_RESUME_URL_CHARS, 'maxResumeUrlChars'),
      resumeWindowMillis: millis(opts.resumeWindowMillis, 65_000, 0, 'resumeWindowMillis'),
    };
    if (this.o.runTtlMillis < this.o.resumeWindowMillis) throw new TypeError('TracewireClient: runTtlMillis must be at least resumeWindowMillis (a run forgotten inside the window would be sent again)');
    if (this.o.auth !== 'subprotocol' && this.o.auth !== 'query') throw new TypeError('TracewireClient: auth must be "subprotocol" or "query"');
    if (!['reconnect', 'always', 'never'].includes(this.o.resumeAll)) throw new TypeError('TracewireClient: resumeAll must be "reconnect", "always" or "never"');
  }

  /** Listen; returns a function that stops listening. */
  on<K extends keyof Handlers>(what: K, fn: Handlers[K]): () => void {
    const set = this.handlers[what] as Set<Handlers[K]>;
    set.add(fn);
    return () => set.delete(fn);
  }

  get status(): ClientState {
    return this.state;
  }

  /** The last seq delivered per followed run (what a reconnect resumes from). */
  positions(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const r of this.runs.values()) out[r.runId] = r.last;
    return out;
  }

  /**
   * Follow a run from `lastSeq` (a page reload that kept the positions in
   * sessionStorage, say): the next connect resumes it. Call before connect().
   */
  follow(runId: string, lastSeq: number): void {
    if (typeof runId !== 'string' || runId === '' || !Number.isInteger(lastSeq) || lastSeq < 0) throw new TypeError('TracewireClient.follow: a run id and a seq >= 0');
    const r = this.track(runId, Date.now());
    if (lastSeq > r.last) r.last = lastSeq;
    // Events waiting at or below the new position are not handed out any more.
    if (r.pending !== undefined) for (const seq of r.pending.keys()) if (seq <= r.last) r.pending.delete(seq);
  }

  /** Connect (again, after close()); the client then stays connected until close(). */
  connect(): void {
    if (this.state === 'connecting' || this.state === 'open' || this.state === 'reconnecting') return;
    this.attempt = 0;
    this.failures = 0;
    void this.open();
  }

  /** Close for good (no reconnect). Pending acks are sent first. Also from a listener: nothing is handed out after it. */
  close(): void {
    if (this.state === 'closed' || this.state === 'idle') {
      this.stopTimers();
      this.state = 'closed';
      return;
    }
    this.flushAcks();
    this.end({ state: 'closed', closeCode: CLOSE_BY_APP, closeReason: 'closed by the application' });
  }

  /** The client stops: no attempt or timer goes on, the socket (if any) is closed, then listeners hear `closed`. */
  private end(status: ClientStatus): void {
    this.stopTimers();
    this.gen++; // an attempt waiting for its token stops there
    const ws = this.ws;
    this.ws = undefined;
    if (ws !== undefined) closeSocket(ws, CLOSE_BY_APP, '');
    this.setState(status);
  }

  // ---- connection ---------------------------------------------------------------

  private async open(): Promise<void> {
    const gen = ++this.gen;
    this.setState({ state: 'connecting' });
    if (gen !== this.gen) return; // a status listener closed or restarted the client
    // The connect timeout counts from here: a token function that never settles is an attempt that failed.
    this.connectStartedAt = this.lastFrameAt = Date.now();
    this.armWatchdog();
    let token: string;
    try {
      token = typeof this.o.token === 'string' ? this.o.token : await this.o.token();
      if (typeof token !== 'string' || token === '') throw new TypeError('the token function gave no token');
    } catch (err) {
      if (gen !== this.gen) return; // closed, timed out or superseded meanwhile
      this.clientError('TW_CLIENT_TOKEN', false, messageOf(err));
      if (gen === this.gen) this.retry(undefined, '', true);
      return;
    }
    if (gen !== this.gen) return;
    // Building the resume may forget expired runs, which tells gap listeners (they may close the client).
    const resume = this.resumeUrl();
    if (gen !== this.gen) return;
    let ws: WebSocketLike;
    try {
      ws = this.socket(token, resume);
    } catch (err) {
      this.clientError('TW_CLIENT_CONNECT', false, messageOf(err));
      if (gen === this.gen) this.retry(undefined, '', true);
      return;
    }
    this.ws = ws;
    this.stats.connects++;
    if (this.everOpened) this.stats.reconnects++;
    ws.onmessage = (m) => this.onFrame(ws, m.data);
    ws.onclose = (c) => this.onClose(ws, c.code, c.reason);
    ws.onerror = noop; // the close that follows says what happened
  }

  /** The attempt's WebSocket: its URL (token, conversation, resume) and subprotocols. */
  private socket(token: string, resume: { inUrl: string; frames: Array<Record<string, number>> }): WebSocketLike {
    const url = new URL(this.o.url);
    if (this.o.auth === 'query') url.searchParams.set('access_token', token);
    if (this.o.conversationId !== undefined) url.searchParams.set('conversation_id', this.o.conversationId);
    if (resume.inUrl !== '') url.searchParams.set('resume', resume.inUrl);
    const all = this.o.resumeAll === 'always' || (this.o.resumeAll === 'reconnect' && this.everOpened);
    // With runs left for frames, `all` goes on the last frame: in the URL the hub would send those runs from
    // their start before the frames named them.
    if (all && resume.frames.length === 0) url.searchParams.set('resume_all', '1');
    this.resumeFrames = resume.frames;
    this.allInLastFrame = all && resume.frames.length > 0;
    return this.o.auth === 'subprotocol' ? new this.WS(url.href, [PROTOCOL, `bearer.${token}`]) : new this.WS(url.href, PROTOCOL);
  }

  /** Runs to resume: `?resume=` up to maxResumeUrlChars, the rest in frames of at most RESUME_FRAME_RUNS runs. */
  private resumeUrl(): { inUrl: string; frames: Array<Record<string, number>> } {
    const now = Date.now();
    this.expire(now);
    let inUrl = '';
    const frames: Array<Record<string, number>> = [];
    let frame: Record<string, number> | undefined;
    let inFrame = 0;
    // Runs still going, most recently active first (the likeliest to have missed something); then runs that
    // completed within resumeWindowMillis: named with their last seq, or resume_all would send them again.
    const all = [...this.runs.values()].reverse();
    const recent = now - this.o.resumeWindowMillis;
    const list = [...all.filter((r) => !r.done && !r.gone), ...all.filter((r) => r.done && !r.gone && r.lastEventAt > recent)];
    for (const r of list) {
      const part = `${r.runId}:${r.last}`;
      if (inUrl.length + part.length + 1 <= this.o.maxResumeUrlChars) {
        inUrl = inUrl === '' ? part : `${inUrl},${part}`;
        continue;
      }
      if (frame === undefined || inFrame === RESUME_FRAME_RUNS) {
        frames.push((frame = {}));
        inFrame = 0;
      }
      frame[r.runId] = r.last;
      inFrame++;
    }
    return { inUrl, frames };
  }

  private onClose(ws: WebSocketLike, code: number, reason: string): void {
    if (ws !== this.ws) return;
    const wasOpen = this.state === 'open';
    this.ws = undefined;
    this.stopTimers();
    this.toAck.clear(); // sent again after the next ack (runs whose last seq is not acked yet)
    if (!this.o.reconnect) {
      this.end({ state: 'closed', closeCode: code, closeReason: reason });
      return;
    }
    if (PROTOCOL_CLOSE_CODES.has(code) || (TOKEN_CLOSE_CODES.has(code) && typeof this.o.token === 'string')) {
      const what = PROTOCOL_CLOSE_CODES.has(code) ? 'a protocol error' : 'the token was refused and it is fixed (pass a function to renew it)';
      // Closed first: a listener of the fatal error may connect() again.
      this.end({ state: 'closed', closeCode: code, closeReason: reason });
      this.clientError('TW_CLIENT_STOPPED', true, `${code} ${reason}`.trim(), what);
      return;
    }
    this.retry(code, reason, !wasOpen);
  }

  /** Wait, then try again; `failed`: the attempt that ended never opened (a drop of an open connection is not a failure). */
  private retry(code: number | undefined, reason: string, failed: boolean): void {
    if (!this.o.reconnect) {
      this.end({ state: 'closed', closeCode: code, closeReason: reason });
      return;
    }
    if (failed) this.failures++;
    this.attempt++;
    if (this.o.maxAttempts !== undefined && this.failures >= this.o.maxAttempts) {
      const n = this.failures;
      this.end({ state: 'closed', closeCode: code, closeReason: reason });
      this.clientError('TW_CLIENT_GAVE_UP', true, n);
      return;
    }
    // Full jitter: a fleet of clients dropped by one restart does not come back in step.
    const cap = Math.min(this.o.maxRetryDelayMillis, this.o.minRetryDelayMillis * 2 ** Math.min(this.attempt - 1, 30));
    const wait = Math.round(cap / 2 + (Math.random() * cap) / 2);
    this.stopTimers();
    this.setState({ state: 'reconnecting', retryInMillis: wait, attempt: this.attempt, closeCode: code, closeReason: reason });
    if (this.state !== 'reconnecting') return; // a status listener closed the client
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (this.state === 'reconnecting') void this.open();
    }, wait);
  }

  // ---- frames ------------------------------------------------------------------

  private onFrame(ws: WebSocketLike, data: unknown): void {
    if (ws !== this.ws || this.state === 'closed') return;
    this.lastFrameAt = Date.now();
    this.pingSentAt = 0;
    const f = parseObject(data);
    if (f === undefined) {
      this.clientError('TW_CLIENT_BAD_FRAME', false);
      return;
    }
    switch (f.type) {
      case 'ack':
        this.onAck(ws, f);
        return;
      case 'pong':
        return;
      case 'error':
        this.onErrorFrame(f);
        return;
      default:
        if (typeof f.run_id === 'string' && typeof f.seq === 'number') this.onEvent(f as unknown as TracewireEvent);
    }
  }

  private onAck(ws: WebSocketLike, f: Record<string, unknown>): void {
    this.attempt = 0;
    this.failures = 0;
    this.everOpened = true;
    this.setState({ state: 'open', connectionId: typeof f.connection_id === 'number' ? f.connection_id : undefined, user: typeof f.user === 'string' ? f.user : undefined });
    if (this.state !== 'open' || ws !== this.ws) return; // a status listener closed the client
    const frames = this.resumeFrames;
    this.resumeFrames = [];
    for (let i = 0; i < frames.length && ws.readyState === OPEN; i++) {
      const last = i === frames.length - 1;
      ws.send(JSON.stringify(last && this.allInLastFrame ? { type: 'resume', runs: frames[i], all: true } : { type: 'resume', runs: frames[i] }));
    }
    // Events that waited through the disconnect get a fresh gapTimeoutMillis for the resume to fill their gap;
    // seqs handed out but not acked before it are acked on this connection.
    const now = Date.now();
    let waiting = false;
    for (const r of this.runs.values()) {
      if (this.o.ack && r.last > r.acked) this.toAck.add(r);
      if (r.pending === undefined || r.pending.size === 0) continue;
      r.waitingSince = now;
      waiting = true;
    }
    if (waiting) this.armGapTimer();
    if (this.toAck.size > 0 && this.ackTimer === undefined) this.ackTimer = setTimeout(() => this.flushAcks(), this.o.ackDelayMillis);
  }

  private onErrorFrame(f: Record<string, unknown>): void {
    const err: TracewireClientError = {
      code: String(f.code ?? 'TW_UNKNOWN'),
      message: String(f.message ?? ''),
      fatal: false,
      ...(typeof f.run_id === 'string' ? { run_id: f.run_id } : {}),
      ...(typeof f.from_seq === 'number' ? { from_seq: f.from_seq } : {}),
      ...(typeof f.to_seq === 'number' ? { to_seq: f.to_seq } : {}),
      ...(Array.isArray(f.run_ids) ? { run_ids: f.run_ids.filter((x): x is string => typeof x === 'string') } : {}),
    };
    // Runs the server cannot resume (unknown, or past the window): stop naming them; what waits in them goes now.
    if (err.run_ids !== undefined) {
      for (const id of err.run_ids) {
        const r = this.runs.get(id);
        if (r === undefined) continue;
        r.gone = true;
        if (r.pending !== undefined && r.pending.size > 0) this.skipToPending(r, 'server');
      }
    }
    if (err.run_id !== undefined && err.from_seq !== undefined && err.to_seq !== undefined) {
      const r = this.runs.get(err.run_id);
      if (r !== undefined && err.to_seq > r.last) {
        addHole(r, err.from_seq, err.to_seq);
        this.drain(r, 'server');
      }
    }
    this.emitError(err);
  }

  private onEvent(ev: TracewireEvent): void {
    this.stats.received++;
    const now = Date.now();
    let r = this.runs.get(ev.run_id);
    let asked = false;
    if (r === undefined) {
      r = this.track(ev.run_id, now);
      // A run first heard of mid-way (its start went to another tab): ask for its start. The event waits
      // for it; the server sends what it still has and names the rest as lost (a gap).
      // A gap listener (a run forgotten to make room) may have closed the client, or followed a run that pushed this one out.
      if (this.state === 'closed' || this.runs.get(ev.run_id) !== r) return;
      if (ev.seq > 1) asked = this.askFrom(ev.run_id, 0);
    } else {
      // Most recently active last (what maxRuns forgets first is at the front).
      this.runs.delete(ev.run_id);
      this.runs.set(ev.run_id, r);
    }
    r.lastEventAt = now;
    r.gone = false; // the server has it after all: name it again
    if (ev.seq <= r.last || r.pending?.has(ev.seq)) {
      this.stats.duplicates++;
      return;
    }
    if (ev.seq === r.last + 1) {
      this.deliver(r, ev);
      this.drain(r, 'server');
      return;
    }
    if (r.pending === undefined || r.pending.size === 0) r.waitingSince = now;
    // The seq just before this one is missing (it went to the user's other tab while this connection's
    // sidecar was cut off from the broker): ask for what follows the last one handed out now, rather than
    // wait out gapTimeoutMillis. The server sends what it or the other sidecars still have and names the
    // rest as lost. Once per hole: the events after this one find it waiting.
    if (!asked && r.pending?.has(ev.seq - 1) !== true) this.askFrom(r.runId, r.last);
    (r.pending ??= new Map()).set(ev.seq, ev);
    if (r.pending.size > this.o.maxPendingPerRun) this.skipToPending(r, 'overflow');
    else this.armGapTimer();
  }

  /** A resume frame for one run after `seq`, on the open connection; false if there is none. */
  private askFrom(runId: string, seq: number): boolean {
    if (this.ws === undefined || this.ws.readyState !== OPEN) return false;
    this.ws.send(JSON.stringify({ type: 'resume', runs: { [runId]: seq } }));
    return true;
  }

  /** Deliver what follows `last` (pending events, or across a hole the server reported). */
  private drain(r: RunTrack, cause: TracewireGap['cause']): void {
    this.prunePending(r);
    // A listener may close the client, or forget this run (follow() of another one at maxRuns): then stop.
    while (this.state !== 'closed' && this.runs.get(r.runId) === r) {
      const next = r.pending?.get(r.last + 1);
      if (next !== undefined) {
        r.pending!.delete(next.seq);
        this.deliver(r, next);
        continue;
      }
      const h = r.holes?.findIndex(([from, to]) => from <= r.last + 1 && to > r.last);
      if (h === undefined || h < 0) break;
      const [, holeTo] = r.holes!.splice(h, 1)[0]!;
      // A hole stops at an event that is here (the server names what its window lacks, not what this
      // connection got before): the rest of it applies after that event.
      const to = Math.min(holeTo, firstPending(r) - 1);
      if (holeTo > to) r.holes!.push([to + 1, holeTo]);
      // The position moves before listeners hear of the gap (one may follow() the run further).
      const from = r.last + 1;
      r.last = Math.max(r.last, to);
      this.gap(r, from, to, cause);
    }
    if (r.holes !== undefined) {
      r.holes = r.holes.filter(([, to]) => to > r.last);
      if (r.holes.length === 0) r.holes = undefined;
    }
    this.prunePending(r);
    if (r.pending !== undefined && r.pending.size > 0) r.waitingSince = Date.now();
  }

  /** Waiting events at or below what was handed out are duplicates now. */
  private prunePending(r: RunTrack): void {
    if (r.pending === undefined || r.pending.size === 0) return;
    for (const seq of r.pending.keys()) {
      if (seq > r.last) continue;
      r.pending.delete(seq);
      this.stats.duplicates++;
    }
  }

  /** Give up waiting: the seqs before the first pending event are a gap (never behind what was handed out). */
  private skipToPending(r: RunTrack, cause: TracewireGap['cause']): void {
    const first = firstPending(r);
    if (first === Number.POSITIVE_INFINITY) return;
    if (first - 1 > r.last) {
      const from = r.last + 1;
      r.last = first - 1;
      this.gap(r, from, first - 1, cause);
    }
    this.drain(r, cause);
  }

  private deliver(r: RunTrack, ev: TracewireEvent): void {
    r.last = ev.seq;
    // The top-level agent's completion is the run's last event (run_id = trace id - its span id).
    if (ev.type === 'agent_completed' && ev.run_id === `${ev.trace_id}-${ev.span_id}`) r.done = true;
    this.stats.delivered++;
    // To be acked before the listeners run: close() from one of them sends it.
    if (this.o.ack) this.toAck.add(r);
    for (const fn of this.handlers.event) {
      try {
        fn(ev);
      } catch (err) {
        this.clientError('TW_CLIENT_HANDLER', false, messageOf(err));
      }
    }
    if (this.o.ack && this.state !== 'closed' && this.ackTimer === undefined) this.ackTimer = setTimeout(() => this.flushAcks(), this.o.ackDelayMillis);
  }

  private gap(r: RunTrack, from: number, to: number, cause: TracewireGap['cause']): void {
    if (to < from) return;
    this.stats.missed += to - from + 1;
    const g: TracewireGap = { run_id: r.runId, from_seq: from, to_seq: to, cause };
    callEach(this.handlers.gap, g);
  }

  private flushAcks(): void {
    if (this.ackTimer !== undefined) clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    for (const r of this.toAck) this.ackNow(r);
    this.toAck.clear();
  }

  /** Acknowledge what was handed out of `r`, if not yet and a connection is open. */
  private ackNow(r: RunTrack): void {
    const ws = this.ws;
    if (r.last <= r.acked || ws === undefined || ws.readyState !== OPEN) return;
    r.acked = r.last;
    ws.send(JSON.stringify({ type: 'ack', run_id: r.runId, seq: r.last }));
  }

  // ---- bounds and timers ----------------------------------------------------------

  private track(runId: string, now: number): RunTrack {
    let r = this.runs.get(runId);
    if (r !== undefined) return r;
    this.expire(now);
    r = { runId, last: 0, pending: undefined, holes: undefined, waitingSince: now, lastEventAt: now, done: false, gone: false, acked: 0 };
    this.runs.set(runId, r);
    while (this.runs.size > this.o.maxRuns) this.forget(this.runs.keys().next().value as string, 'overflow');
    return r;
  }

  private forget(runId: string, cause: 'overflow' | 'timeout'): void {
    const r = this.runs.get(runId);
    if (r === undefined) return;
    this.runs.delete(runId);
    // Its ack goes now (it would go with the run otherwise).
    if (this.toAck.delete(r)) this.ackNow(r);
    // Events that waited in it are not handed out: say so (and they are let go with it).
    const pending = r.pending;
    r.pending = undefined;
    r.holes = undefined;
    if (pending !== undefined && pending.size > 0) this.gap(r, r.last + 1, Math.max(...pending.keys()), cause);
    this.stats.forgottenRuns++;
  }

  private expire(now: number): void {
    for (const r of this.runs.values()) {
      if (r.lastEventAt + this.o.runTtlMillis > now) break; // least recently active first
      this.forget(r.runId, 'timeout');
    }
  }

  private armGapTimer(): void {
    if (this.gapTimer !== undefined || this.state === 'closed') return;
    this.gapTimer = setTimeout(() => {
      this.gapTimer = undefined;
      const now = Date.now();
      let waiting = false;
      for (const r of this.runs.values()) {
        if (this.state === 'closed') return; // a listener closed the client: nothing more, no timer
        if (r.pending === undefined || r.pending.size === 0) continue;
        if (r.waitingSince + this.o.gapTimeoutMillis <= now) this.skipToPending(r, 'timeout');
        if (r.pending !== undefined && r.pending.size > 0) waiting = true;
      }
      if (waiting) this.armGapTimer();
    }, this.o.gapTimeoutMillis / 4);
  }

  /** One timer for the connect timeout and the ping: it ticks at half the shortest of them. */
  private armWatchdog(): void {
    if (this.watchdog !== undefined) clearTimeout(this.watchdog);
    const ping = this.o.pingIntervalMillis === 0 ? Number.POSITIVE_INFINITY : Math.min(this.o.pingIntervalMillis, this.o.pingTimeoutMillis);
    const tick = Math.max(5, Math.min(ping, this.o.connectTimeoutMillis) / 2);
    this.watchdog = setTimeout(() => this.checkAlive(), tick);
  }

  private checkAlive(): void {
    this.watchdog = undefined;
    const ws = this.ws;
    const now = Date.now();
    if (this.state === 'connecting') {
      if (now - this.connectStartedAt >= this.o.connectTimeoutMillis) {
        if (ws === undefined) {
          // Still waiting for the token: this attempt is given up (its token, if it ever comes, is not used).
          const gen = ++this.gen;
          this.clientError('TW_CLIENT_TOKEN', false, `the token function did not answer within ${this.o.connectTimeoutMillis} ms`);
          if (gen === this.gen) this.retry(undefined, '', true);
          return;
        }
        this.clientError('TW_CLIENT_CONNECT', false, `no ack within ${this.o.connectTimeoutMillis} ms`);
        this.drop(ws, CLOSE_NO_ACK, 'no ack');
        return;
      }
    } else if (ws === undefined) {
      return;
    } else if (this.o.pingIntervalMillis > 0) {
      if (this.pingSentAt !== 0 && now - this.pingSentAt >= this.o.pingTimeoutMillis) {
        // Nothing since the ping: a half-open connection. Drop it and reconnect (its close event may never come).
        this.clientError('TW_CLIENT_NO_PONG', false, this.o.pingTimeoutMillis);
        this.drop(ws, CLOSE_NO_PONG, 'no pong');
        return;
      }
      if (this.pingSentAt === 0 && now - this.lastFrameAt >= this.o.pingIntervalMillis && ws.readyState === OPEN) {
        ws.send(JSON.stringify({ type: 'ping' }));
        this.pingSentAt = now;
      }
    }
    this.armWatchdog();
  }

  /** Give up a connection the client judged dead (no handshake to wait for), handled as closed now. */
  private drop(ws: WebSocketLike, code: number, reason: string): void {
    if (ws !== this.ws) return; // an error listener closed the client meanwhile
    detach(ws);
    if (ws.terminate !== undefined) ws.terminate();
    else {
      try {
        ws.close(code, reason);
      } catch {
        /* closing anyway */
      }
    }
    this.onClose(ws, code, reason);
  }

  private stopTimers(): void {
    for (const t of [this.retryTimer, this.ackTimer, this.gapTimer, this.watchdog]) if (t !== undefined) clearTimeout(t);
    this.retryTimer = this.ackTimer = this.gapTimer = this.watchdog = undefined;
    this.pingSentAt = 0;
  }

  // ---- listeners ---------------------------------------------------------------

  private setState(s: ClientStatus): void {
    this.state = s.state;
    callEach(this.handlers.status, s);
  }

  private clientError(code: ErrorCode & `TW_CLIENT_${string}`, fatal: boolean, ...args: unknown[]): void {
    this.emitError({ code, message: formatMessage(code, args), fatal });
  }

  private emitError(e: TracewireClientError): void {
    callEach(this.handlers.error, e);
  }
}

/** Call every listener of a set; a listener's fault is its own. */
function callEach<T>(listeners: Iterable<(x: T) => void>, x: T): void {
  for (const fn of listeners) {
    try {
      fn(x);
    } catch {
      /* not the client's to report */
    }
  }
}

/** A frame's JSON object, or undefined if it is not one. */
function parseObject(data: unknown): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(typeof data === 'string' ? data : String(data));
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Close a socket the client is done with. In Node (the `ws` package), a peer
 * that does not answer the close would keep the socket, and the process,
 * for 30 s: it is destroyed after a second.
 */
function closeSocket(ws: WebSocketLike, code: number, reason: string): void {
  detach(ws);
  if (ws.terminate !== undefined) {
    const t = setTimeout(() => ws.terminate!(), CLOSE_GRACE_MILLIS);
    ws.onclose = () => clearTimeout(t);
  }
  try {
    ws.close(code, reason);
  } catch {
    /* not open yet */
  }
}

/** Stop listening to a socket given up. Its error handler stays a no-op: the `ws` package emits 'error' on a close before the upgrade completed, which with no listener would crash the process. */
function detach(ws: WebSocketLike): void {
  ws.onopen = ws.onmessage = ws.onclose = null;
  ws.onerror = noop;
}

/** A URL `new URL()` takes, with the ws: or wss: scheme. */
/** Holes a run keeps (one per hole frame not reached yet); past it the oldest goes. */
const MAX_HOLES_PER_RUN = 64;

/** Note a hole the server named, unless one noted already covers it. */
function addHole(r: RunTrack, from: number, to: number): void {
  const holes = (r.holes ??= []);
  if (holes.some(([f, t]) => f <= from && t >= to)) return;
  holes.push([from, to]);
  if (holes.length > MAX_HOLES_PER_RUN) holes.shift();
}

/** The lowest seq waiting in a run (Infinity when none). */
function firstPending(r: RunTrack): number {
  let first = Number.POSITIVE_INFINITY;
  if (r.pending !== undefined) for (const seq of r.pending.keys()) if (seq < first) first = seq;
  return first;
}

function isWsUrl(v: string): boolean {
  try {
    const u = new URL(v);
    return u.protocol === 'ws:' || u.protocol === 'wss:';
  } catch {
    return false;
  }
}

/** Timers take at most 2^31 - 1 ms (longer ones fire at once). */
const MAX_TIMER_MILLIS = 2 ** 31 - 1;

function millis(v: number | undefined, dflt: number, min: 0 | 1, name: string): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > MAX_TIMER_MILLIS) {
    throw new TypeError(`TracewireClient: ${name} must be a number of milliseconds from ${min} to ${MAX_TIMER_MILLIS}`);
  }
  return v;
}

function count(v: number | undefined, dflt: number, max: number, name: string): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > max) throw new TypeError(`TracewireClient: ${name} must be a whole number from 1 to ${max}`);
  return v;
}
