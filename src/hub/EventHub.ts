import type { IncomingMessage, Server } from 'node:http';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { WebSocketServer, type WebSocket } from 'ws';
import type { DISCONNECT_REASONS, DropReason, Metrics } from '../audit/Metrics.js';
import type { RunLedger } from '../audit/RunLedger.js';
import { EV_DELIVERED, EV_PENDING, type EventRecord } from '../audit/RunRecord.js';
import { OutboundEvent, type EventSink } from '../bridge/EventSink.js';
import { httpErrorResponse, TracewireError, type ErrorCode } from '../errors/errors.js';
import { DEV_JWT_SECRET, isLoopbackAddress } from '../config/Config.js';
import { JwtVerifier, PROTOCOL, tokenFrom, type Principal } from './auth.js';
import { Connection, RESUMED_PRUNE_FROM, type Delivery } from './Connection.js';
import { Fifo, NumberFifo } from '../util/Fifo.js';
import { frameOf, frameSize } from './frame.js';
import { mergeSeqs } from '../util/arrays.js';
import { ReplayStore } from './ReplayStore.js';
import type { Broker } from './fanout/Broker.js';
import { Fanout, RemoteEvent, type FanoutOptions, type KeptForResume, type ResumeAnswer, type ResumeSummary, type RunsAnswers } from './fanout/Fanout.js';

export interface EventHubOptions {
  readonly jwtSecret: string;
  /** Told of a connection refused because it came in off loopback while the built-in dev secret is in use. */
  readonly onDevSecretRefused?: (e: TracewireError) => void;
  /** WebSocket endpoint path. Default `/v1/events`. */
  readonly path?: string;
  /**
   * Unsent bytes per connection (its queue plus the socket's buffer) before
   * it is closed with 4408. Also the largest burst one connection absorbs.
   * Default 4 MiB.
   */
  readonly wsMaxBufferedBytes: number;
  /** Ping interval; no pong by the next ping terminates. 0 disables. Default 30000. */
  readonly wsHeartbeatMillis: number;
  /** Open connections. Default 20000. */
  readonly wsMaxConnections: number;
  /** Resume window after a run ends, and hold time for users with no connection. Default 60000. */
  readonly replayRetentionMillis: number;
  /** Default 1000. */
  readonly replayMaxEventsPerRun: number;
  /** Default 1 MiB. */
  readonly replayMaxBytesPerRun: number;
  /** Resume window across all runs (frames plus per-event overhead). Default 256 MiB. */
  readonly replayMaxTotalBytes?: number;
  /** Held events (users with no connection) across all users. Default 200000. */
  readonly maxHeldEvents?: number;
  /** Bytes of held events across all users (their frames' size, estimated from the events' fields: they are serialised when a connection takes them). Default 64 MiB. */
  readonly maxHeldBytes?: number;
  /** A run's replay entry is dropped after this long without events even if it never ended. Default 600000. */
  readonly replayMaxIdleMillis?: number;
  /**
   * After a close for backpressure, how long the close frame may take to get
   * through before the socket is destroyed. Default 1000.
   */
  readonly wsCloseGraceMillis?: number;
  readonly metrics: Metrics;
  readonly ledger: RunLedger;
  /**
   * Fault injection for demos and tests: writes to connections of users for
   * which this returns true fail as if the socket had errored.
   */
  readonly failWritesFor?: (user: string) => boolean;
  readonly now?: () => number;
}

type DisconnectReason = (typeof DISCONNECT_REASONS)[number];

/**
 * Serialise and measure an event (the JSON text, built by concatenation, is
 * flattened by the measuring: a retained event keeps one flat string). Called
 * once per event, when a connection first takes it; `bytes` is then exact.
 */
function measure(ev: OutboundEvent): void {
  ev.bytes = frameSize(ev.payload);
}

/** The answer to an upgrade while the hub shuts down (before a WebSocket exists to carry 1001). */
const BAD_REQUEST_RESPONSE = 'HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n';

/** The URL of an upgrade request's target: origin form (`//x` is a path, not a host) or absolute form; undefined if it is neither. */
function requestUrl(target: string | undefined): URL | undefined {
  try {
    return target === undefined || target.startsWith('/') ? new URL(`http://localhost${target ?? '/'}`) : new URL(target);
  } catch {
    return undefined;
  }
}

const SHUTTING_DOWN_RESPONSE = 'HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n';
const MAX_BAD_FRAMES = 10;
/** Largest client frame (the `ws` library enforces it; the hub answers TW_WS_FRAME_TOO_LARGE and 1009). */
const MAX_CLIENT_FRAME_BYTES = 64 * 1024;
/** The `ws` library's error codes for a client frame over maxPayload (or a length no number can hold). */
const TOO_LARGE_CODES = new Set(['WS_ERR_UNSUPPORTED_MESSAGE_LENGTH', 'WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH']);
/** Runs one resume (frame or URL) may name; more is a bad field (name them over several frames). */
export const MAX_RESUME_RUNS = 1000;
/** Run ids a resume asked of other sidecars may tell them to leave out of `all` (more: `all` is answered from this sidecar only). */
const MAX_SKIP_IN_ASK = 4000;
/** An aggregated error names this many run ids (or resume parts), each cut to MAX_ID_IN_ERROR characters, and counts the rest. */
const NAMED_IN_ERROR = 10;
const MAX_ID_IN_ERROR = 128;
/** The longest delay a Node timer takes (about 24.8 days); longer waits are re-armed. */
const MAX_TIMER_MILLIS = 2 ** 31 - 1;
const PONG = JSON.stringify({ type: 'pong' });

/** A client-supplied id for an error message: at most MAX_ID_IN_ERROR characters. */
function shortId(id: string): string {
  return id.length <= MAX_ID_IN_ERROR ? id : `${id.slice(0, MAX_ID_IN_ERROR)}…`;
}

/** `a, b, c` for the first NAMED_IN_ERROR of `count` items, `, …` when there are more. */
function firstFew(items: readonly string[], count: number): string {
  return items.join(', ') + (count > items.length ? ', …' : '');
}

/**
 * The event hub: authenticated WebSocket connections grouped by user, each
 * event written only to its user's connections (optionally narrowed to one
 * conversation), delivery outcomes reported to the ledger, a resume window,
 * held events for users not connected yet, backpressure, heartbeats and a
 * graceful close. Every piece of state is bounded; docs/delivery.md has the
 * numbers.
 */
export class EventHub implements EventSink {
  readonly path: string;
  private readonly wss: WebSocketServer;
  private readonly verifier: JwtVerifier;
  /** The built-in dev secret is in use (only loopback connections are taken). */
  private readonly devSecret: boolean;
  private readonly byUser = new Map<string, Set<Connection>>();
  private readonly all = new Set<Connection>();
  private readonly dirty = new Set<Connection>();
  private flushScheduled = false;
  // Held events (no connection wanted them when they were published; their record's `inHold` is
  // set while held), by their ledger records: per user (release on connect) and one FIFO across
  // users (expiry and bounds). Most are held as the record alone (`publishRecord`: the event object
  // is made when a connection takes it); an event published as an object keeps it in `heldEvents`.
  /** Each user's held events in hold order (given-up ones leave from the front as they reach it). */
  private readonly heldByUser = new Map<string, Fifo<EventRecord>>();
  private readonly heldQ = new Fifo<EventRecord>();
  /** When each entry of heldQ was held (ms). */
  private readonly heldAt = new NumberFifo();
  /** The event objects of held events that have one, by record. */
  private readonly heldEvents = new Map<EventRecord, OutboundEvent>();
  private heldCount = 0;
  private heldBytes = 0;
  private readonly maxHeld: number;
  private readonly maxHeldBytes: number;
  private readonly replay: ReplayStore;
  private nextId = 1;
  private heartbeat: NodeJS.Timeout | undefined;
  private readonly sweeper: NodeJS.Timeout;
  private closing = false;
  private closed = false;
  /** Upgrades whose token is being verified; shutdown waits for them (they get 1001, not a 503). */
  private pendingUpgrades = 0;
  private upgradesSettled: (() => void) | undefined;
  /** Sockets the hub closes with a close handshake after a `ws` error (frame too large): not terminated on that error. */
  private readonly closingOnError = new WeakSet<WebSocket>();
  private readonly now: () => number;
  private exemplarTick = 0;
  private readonly metrics: Metrics;
  private readonly ledger: RunLedger;
  private readonly closeGraceMillis: number;
  private readonly untrack: Array<() => void>;
  private readonly onDone = (d: Delivery, ok: boolean, reason: DropReason | undefined): void => this.settle(d, ok, reason);
  private readonly isRetained = (runId: string): boolean => this.replay.contains(runId);
  /** Fan-out across sidecars through a broker (`startFanout`); undefined for a single sidecar. */
  private fanout: Fanout | undefined;
  /** Answers the other sidecars' runs API questions (set by the runs API; see `askRuns`). */
  runsAnswerer: ((question: unknown, maxBytes: number) => unknown) | undefined;

  constructor(private readonly opts: EventHubOptions) {
    this.path = opts.path ?? '/v1/events';
    this.now = opts.now ?? Date.now;
    this.metrics = opts.metrics;
    this.ledger = opts.ledger;
    this.maxHeld = opts.maxHeldEvents ?? 200_000;
    this.maxHeldBytes = opts.maxHeldBytes ?? 64 * 1024 * 1024;
    this.closeGraceMillis = opts.wsCloseGraceMillis ?? 1000;
    this.verifier = new JwtVerifier(opts.jwtSecret);
    this.devSecret = opts.jwtSecret === DEV_JWT_SECRET;
    this.wss = new WebSocketServer({
      noServer: true,
      perMessageDeflate: false,
      maxPayload: MAX_CLIENT_FRAME_BYTES,
      handleProtocols: (protocols) => (protocols.has(PROTOCOL) ? PROTOCOL : false),
    });
    this.replay = new ReplayStore({
      retentionMillis: opts.replayRetentionMillis,
      maxEventsPerRun: opts.replayMaxEventsPerRun,
      maxBytesPerRun: opts.replayMaxBytesPerRun,
      maxTotalBytes: opts.replayMaxTotalBytes ?? 256 * 1024 * 1024,
      maxIdleMillis: opts.replayMaxIdleMillis ?? 600_000,
      now: this.now,
      onTrim: (reason, n) => this.metrics.resumeWindowTrimmed.inc({ reason }, n),
    });
    if (opts.wsHeartbeatMillis > 0) {
      this.heartbeat = setInterval(() => this.beat(), opts.wsHeartbeatMillis);
      this.heartbeat.unref();
    }
    const sweepEvery = Math.max(50, Math.min(1000, Math.floor(opts.replayRetentionMillis / 4) || 50));
    this.sweeper = setInterval(() => this.sweep(), sweepEvery);
    this.sweeper.unref();
    const m = this.metrics;
    this.untrack = [
      m.connections.track(() => this.all.size),
      m.heldEvents.track(() => this.heldCount),
      m.heldEventBytes.track(() => this.heldBytes),
      m.resumeWindowRuns.track(() => this.replay.size),
      m.resumeWindowBytes.track(() => this.replay.bytes),
    ];
  }

  /**
   * Fan events out across sidecars through `broker` (DESIGN.md "Scale"):
   * events of users connected to another sidecar go there, events from
   * other sidecars come to this one's connections. Resolves once subscribed.
   */
  startFanout(broker: Broker, opts: Omit<FanoutOptions, 'metrics'>): Promise<void> {
    if (this.fanout !== undefined) throw new Error('startFanout: already started');
    this.fanout = new Fanout(
      broker,
      {
        localUsers: () => this.byUser.keys(),
        deliverRemote: (ev) => this.deliverRemote(ev),
        settleRemote: (d, ok, reason) => this.settleRemote(d, ok, reason),
        releaseHeldTo: (user, instance) => this.releaseHeldTo(user, instance),
        ackRemote: (runId, user, seq) => this.ackRun(runId, user, seq),
        runEndedRemote: (runId) => this.replay.ended(runId),
        keptForResume: (user, runs, all, skip) => this.keptForResume(user, runs, all, skip),
        runsAsked: (question, maxBytes) => this.runsAnswerer?.(question, maxBytes),
        deliveredByResume: (runId, seq) => {
          const run = this.ledger.get(runId);
          const ev = run?.events[seq - 1]?.seq === seq ? run.events[seq - 1] : run?.events.find((e) => e.seq === seq);
          if (run !== undefined && ev !== undefined) this.ledger.markDelivered(run, ev, true);
        },
      },
      { ...opts, metrics: this.metrics.broker() },
    );
    return this.fanout.start();
  }

  get connectionCount(): number {
    return this.all.size;
  }

  get verifierForTokens(): JwtVerifier {
    return this.verifier;
  }

  /** Route upgrades for the hub's path on `server`. */
  attach(server: Server): void {
    server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      // Node's server no longer listens for errors on an upgraded socket: a peer's reset must not become an uncaught 'error'.
      if (socket.listenerCount('error') === 0) socket.on('error', () => socket.destroy());
      // Another path is the app's, when it listens for upgrades too (library mode); else nobody's.
      if (!this.handleUpgrade(req, socket, head) && server.listenerCount('upgrade') === 1) {
        socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      }
    });
  }

  /** Handle an HTTP upgrade; false when the path is not the hub's. */
  handleUpgrade(req: IncomingMessage, socket: Socket, head: Buffer): boolean {
    const url = requestUrl(req.url);
    if (url === undefined) {
      // Not a request-target any URL parser takes (e.g. `//x:99999/v1/events`): refused, whatever its path.
      socket.end(BAD_REQUEST_RESPONSE);
      return true;
    }
    if (url.pathname !== this.path) return false;
    if (socket.listenerCount('error') === 0) socket.on('error', () => socket.destroy());
    // The built-in dev secret is public: anyone could sign a token for any user. Whatever server the hub is
    // attached to (a library app, startSidecar), a connection that came in off loopback is refused with it.
    if (this.devSecret && socket.localAddress !== undefined && !isLoopbackAddress(socket.localAddress)) {
      this.metrics.connectionAttempts.inc({ result: 'TW_CONFIG_INVALID' });
      const e = new TracewireError('TW_CONFIG_INVALID', `a connection on ${socket.localAddress}: set jwtSecret / TRACEWIRE_JWT_SECRET (the built-in dev secret is only for loopback)`);
      socket.end(httpErrorResponse(e));
      this.opts.onDevSecretRefused?.(e);
      return true;
    }
    if (this.closing) {
      socket.end(SHUTTING_DOWN_RESPONSE);
      return true;
    }
    this.pendingUpgrades++;
    const settled = (): void => {
      if (--this.pendingUpgrades === 0 && this.upgradesSettled !== undefined) {
        const resolve = this.upgradesSettled;
        this.upgradesSettled = undefined;
        resolve();
      }
    };
    this.verifier.verify(tokenFrom(req, url)).then(
      (p) => {
        try {
          this.upgrade(req, socket, head, (ws) => this.open(ws, socket, p, url));
        } finally {
          settled();
        }
      },
      (err: unknown) => {
        try {
          this.upgrade(req, socket, head, (ws) => this.refuse(ws, err));
        } finally {
          settled();
        }
      },
    );
    return true;
  }

  /**
   * Complete the WebSocket handshake, then `then`. When shutdown began while
   * the token was being verified, the client still gets a WebSocket (shutdown
   * waits for these upgrades): an error frame TW_WS_SHUTDOWN and close 1001,
   * which a browser can read, where it could not read an HTTP 503.
   */
  private upgrade(req: IncomingMessage, socket: Socket, head: Buffer, then: (ws: WebSocket) => void): void {
    if (socket.destroyed) return;
    if (this.closing) then = (ws) => this.refuse(ws, new TracewireError('TW_WS_SHUTDOWN'));
    try {
      this.wss.handleUpgrade(req, socket, head, (ws) => {
        ws.on('error', () => {
          if (!this.closingOnError.has(ws)) ws.terminate();
        });
        then(ws);
      });
    } catch {
      this.metrics.internalErrors.inc({ component: 'hub' });
      socket.destroy();
    }
  }

  private refuse(ws: WebSocket, err: unknown): void {
    const e = err instanceof TracewireError ? err : new TracewireError('TW_INTERNAL', String(err));
    this.metrics.connectionAttempts.inc({ result: e.code });
    this.sendError(ws, e);
    ws.close(e.closeCode ?? 1011, e.code);
  }

  /** Write an error frame outside any budget: only for frames that precede a close (refusals, closes). */
  private sendError(ws: WebSocket, e: TracewireError): void {
    if (ws.readyState !== 1) return;
    try {
      ws.send(JSON.stringify({ type: 'error', ...e.toJSON() }));
    } catch {
      /* closed already */
    }
  }

  /**
   * Write a control frame (an error frame that does not close, a pong) to a
   * connection, counted against its budget like an event: when it would take
   * the connection over wsMaxBufferedBytes (a client that sends but does not
   * read), the connection is closed for backpressure instead. False when the
   * connection is closed (or was just closed).
   */
  private sendControl(conn: Connection, text: string): boolean {
    if (conn.closed || conn.ws.readyState !== 1) return false;
    if (!conn.fits(frameSize(text))) {
      this.backpressure(conn);
      return false;
    }
    try {
      conn.ws.send(text);
    } catch {
      /* closed already */
    }
    return true;
  }

  /** An error frame within the connection's budget; `fields` add what a client acts on (resume: run ids, seq ranges). */
  private sendErrorTo(conn: Connection, e: TracewireError, fields?: Record<string, unknown>): boolean {
    return this.sendControl(conn, JSON.stringify({ type: 'error', ...e.toJSON(), ...fields }));
  }

  private open(ws: WebSocket, socket: Socket, p: Principal, url: URL): void {
    if (this.closing) {
      this.refuse(ws, new TracewireError('TW_WS_SHUTDOWN'));
      return;
    }
    if (this.all.size >= this.opts.wsMaxConnections) {
      this.refuse(ws, new TracewireError('TW_WS_TOO_MANY_CONNECTIONS', this.opts.wsMaxConnections));
      return;
    }
    const conversation = url.searchParams.get('conversation_id') || undefined;
    const conn = new Connection(this.nextId++, p.user, conversation, ws, socket, this.opts.wsMaxBufferedBytes, this.onDone, this.isRetained);
    this.all.add(conn);
    let set = this.byUser.get(p.user);
    if (set === undefined) this.byUser.set(p.user, (set = new Set()));
    set.add(conn);
    this.fanout?.userOnline(p.user);
    this.metrics.connectionAttempts.inc({ result: 'accepted' });

    ws.on('pong', () => {
      conn.alive = true;
    });
    ws.on('message', (data, isBinary) => this.onClientFrame(conn, data as Buffer, isBinary));
    ws.on('close', (code) => this.onClose(conn, code));
    // A client frame over maxPayload: `ws` closes with 1009 as soon as it reads the frame's length, and reports
    // it on its receiver first. Answer it there, while the socket is still open: the error frame, then 1009.
    const receiver = (ws as unknown as { _receiver?: { prependListener?: (ev: 'error', f: (err: Error & { code?: string }) => void) => void } })._receiver;
    receiver?.prependListener?.('error', (err) => {
      if (TOO_LARGE_CODES.has(err.code ?? '')) this.frameTooLarge(conn);
    });
    if (p.expiresAtMs !== undefined) this.armExpiry(conn, p.expiresAtMs);

    ws.send(JSON.stringify({ type: 'ack', protocol: PROTOCOL, user: p.user, connection_id: conn.id, conversation_id: conversation ?? null }));

    // Resume named in the URL first (?resume=<run_id>:<seq>,...[&resume_all=1]), then events held while the user had no connection.
    const resume = url.searchParams.get('resume');
    const resumeAll = url.searchParams.get('resume_all');
    if (resume || resumeAll === '1' || resumeAll === 'true') {
      const runs: Record<string, number> = {};
      const bad: string[] = [];
      let badCount = 0;
      for (const part of (resume ?? '').split(',')) {
        const i = part.lastIndexOf(':');
        const seq = Number(part.slice(i + 1));
        if (i > 0 && Number.isInteger(seq) && seq >= 0) runs[part.slice(0, i)] = seq;
        else if (part !== '' && badCount++ < NAMED_IN_ERROR) bad.push(`"${shortId(part)}"`);
      }
      // One error for all the parts that are not <run_id>:<seq>.
      if (badCount === 1) this.sendErrorTo(conn, new TracewireError('TW_WS_BAD_FIELD', 'resume', `${bad[0]} is not <run_id>:<seq>`));
      else if (badCount > 1) this.sendErrorTo(conn, new TracewireError('TW_WS_BAD_FIELD', 'resume', `${badCount} parts are not <run_id>:<seq>: ${firstFew(bad, badCount)}`));
      const named = Object.keys(runs).length;
      if (named > MAX_RESUME_RUNS) this.sendErrorTo(conn, new TracewireError('TW_WS_BAD_FIELD', 'resume', `names ${named} runs, at most ${MAX_RESUME_RUNS} per resume; name the rest in resume frames`));
      else if (!conn.closed) this.resume(conn, runs, resumeAll === '1' || resumeAll === 'true');
    }
    if (!conn.closed) this.releaseHeld(conn);
    this.scheduleFlush();
  }

  // ---- sink side ----------------------------------------------------------

  publish(ev: OutboundEvent): void {
    if (this.closed) {
      this.ledger.markDropped(ev.run, ev.record, 'shutdown');
      return;
    }
    this.deliver(ev, this.byUser.get(ev.user), this.now(), this.fanout?.targetsOf(ev.user));
  }

  publishRecord(record: EventRecord, hookAt: number | undefined, atMs: number): void {
    if (this.closed) {
      this.ledger.markDropped(record.run, record, 'shutdown');
      return;
    }
    const user = record.run.user ?? '';
    const set = this.byUser.get(user);
    const remote = this.fanout?.targetsOf(user);
    // No connection of its user: held as the record alone (its event object is made when one takes it).
    if (set === undefined && remote === undefined) this.hold(record, undefined, atMs);
    else this.deliver(OutboundEvent.ofRecord(record, hookAt), set, atMs, remote);
  }

  /**
   * Send an event to the connections of its user (`set`) that take it and to
   * the other sidecars with a connection of the user (`remote`), or hold it
   * (from `atMs`) if there is none.
   */
  private deliver(ev: OutboundEvent, set: Set<Connection> | undefined, atMs: number, remote: ReadonlySet<string> | undefined): void {
    let targets = 0;
    if (set !== undefined) for (const c of set) if (c.accepts(ev)) targets++;
    const remoteCount = remote?.size ?? 0;
    if (targets === 0 && remoteCount === 0) {
      // Held, not serialised and not in the resume window yet: both happen when a connection takes it.
      this.hold(ev.record, ev, atMs);
      return;
    }
    ev.run.sawConnection = true;
    const d: Delivery = { ev, remaining: targets + remoteCount, ok: false, late: false, failReason: undefined };
    // Other sidecars first (they take the event's text before framing lets go of it); each reports its outcome.
    if (remoteCount > 0) for (const instance of remote!) this.fanout!.send(instance, ev, d, false);
    if (targets === 0) {
      // Kept in this sidecar's window too: a client that resumes through any sidecar finds the run here
      // even if the sidecar that relayed it is gone.
      measure(ev);
      this.replay.add(ev);
      return;
    }
    // Framed once for several connections (which measures it); one connection writes it straight into its batch.
    if (targets > 1) frameOf(ev);
    else measure(ev);
    this.replay.add(ev);
    for (const c of set!) {
      if (!c.accepts(ev)) continue;
      ev.record.attempts++;
      if (!c.enqueue(d)) this.backpressure(c);
      else this.dirty.add(c);
    }
    this.scheduleFlush();
  }

  /** Ask the other sidecars a runs API question; undefined without a fan-out, or when it cannot ask now. */
  askRuns(question: unknown): Promise<RunsAnswers> | 'busy' | undefined {
    return this.fanout?.askRuns(question);
  }

  runEnded(runId: string): void {
    this.replay.ended(runId);
    this.fanout?.runEnded(runId);
  }

  // ---- held events (users with no connection) -------------------------------

  /** Hold an event (`ev`: its object, if it has one) for its user, who has no connection that takes it, from `atMs`. */
  private hold(record: EventRecord, ev: OutboundEvent | undefined, atMs: number): void {
    this.ledger.markHeld(record);
    if (this.opts.replayRetentionMillis === 0 || this.closing) {
      this.ledger.markDropped(record.run, record, this.closing ? 'shutdown' : 'no_subscriber');
      return;
    }
    record.inHold = true;
    const user = record.run.user ?? '';
    let list = this.heldByUser.get(user);
    if (list === undefined) this.heldByUser.set(user, (list = new Fifo<EventRecord>()));
    list.push(record);
    this.heldQ.push(record);
    this.heldAt.push(atMs);
    this.heldCount++;
    if (ev !== undefined) {
      this.heldEvents.set(record, ev);
      ev.bytes = ev.estimatedBytes;
      this.heldBytes += ev.bytes;
    } else this.heldBytes += OutboundEvent.heldEstimate(record);
    // Bounds: give up the oldest held events (across users) first.
    while ((this.heldCount > this.maxHeld || this.heldBytes > this.maxHeldBytes) && this.heldQ.length > 0) {
      const old = this.heldQ.shift()!;
      this.heldAt.shift();
      if (!old.inHold) continue;
      this.unheld(old);
      this.ledger.markDropped(old.run, old, 'no_subscriber');
      this.trimUser(old.run.user ?? '', old);
    }
  }

  /** The event object a held event was held with, if any (most are held as their record alone). */
  private heldEventOf(record: EventRecord): OutboundEvent | undefined {
    return this.heldEvents.size === 0 ? undefined : this.heldEvents.get(record);
  }

  /**
   * Take one held event out of the hold (delivered, dropped or expired);
   * returns its event object if it was held with one.
   */
  private unheld(record: EventRecord): OutboundEvent | undefined {
    record.inHold = false;
    this.heldCount--;
    const ev = this.heldEventOf(record);
    if (ev === undefined) {
      this.heldBytes -= OutboundEvent.heldEstimate(record);
      return undefined;
    }
    this.heldEvents.delete(record);
    this.heldBytes -= ev.bytes;
    ev.bytes = 0; // measured when a connection takes it
    return ev;
  }

  /**
   * Drop given-up entries at the head of a user's held list. `gone`: the one
   * event just given up; when it is the head (the usual case: both the list
   * and the bound go oldest first) only it is dropped, without reading the
   * entries after it (any other given-up entries go at a later trim).
   */
  private trimUser(user: string, gone?: EventRecord): void {
    const list = this.heldByUser.get(user);
    if (list === undefined) return;
    if (gone !== undefined && list.peek() === gone) list.shift();
    else while (list.length > 0 && !list.peek()!.inHold) list.shift();
    if (list.length === 0) this.heldByUser.delete(user);
  }

  /** Deliver events held for this connection's user (those it wants), in order, counted as delivered late. */
  private releaseHeld(conn: Connection): void {
    const list = this.heldByUser.get(conn.user);
    if (list === undefined) return;
    const held = inRunOrder(list);
    const keep = new Fifo<EventRecord>();
    for (let rec = held.shift(); rec !== undefined; rec = held.shift()) {
      if (!rec.inHold) continue;
      const ev = this.heldEventOf(rec) ?? OutboundEvent.ofRecord(rec, undefined);
      if (!conn.wants(ev)) {
        keep.push(rec);
        continue;
      }
      this.unheld(rec);
      measure(ev);
      this.replay.add(ev);
      ev.run.sawConnection = true;
      ev.record.attempts++;
      const d: Delivery = { ev, remaining: 1, ok: false, late: true, failReason: undefined };
      if (!conn.enqueue(d)) {
        this.backpressure(conn);
        break;
      }
    }
    // Whatever was not reached (the connection was closed for backpressure) stays held.
    for (let rec = held.shift(); rec !== undefined; rec = held.shift()) if (rec.inHold) keep.push(rec);
    if (keep.length > 0) this.heldByUser.set(conn.user, keep);
    else this.heldByUser.delete(conn.user);
    if (conn.dirty) this.dirty.add(conn);
  }

  // ---- other sidecars (fan-out) ------------------------------------------------

  /** Origin: another sidecar announced `user`; send it the events held for the user (it reports each one back). */
  private releaseHeldTo(user: string, instance: string): void {
    const list = this.heldByUser.get(user);
    if (list === undefined || this.fanout === undefined) return;
    this.heldByUser.delete(user);
    const held = inRunOrder(list);
    for (let rec = held.shift(); rec !== undefined; rec = held.shift()) {
      if (!rec.inHold) continue;
      const ev = this.unheld(rec) ?? OutboundEvent.ofRecord(rec, undefined);
      ev.run.sawConnection = true;
      rec.attempts++;
      this.fanout.send(instance, ev, { ev, remaining: 1, ok: false, late: true, failReason: undefined }, true);
      measure(ev);
      this.replay.add(ev);
    }
  }

  /**
   * Edge: an event from the sidecar that judges its run, for this sidecar's
   * connections of its user. Kept in this sidecar's resume window like its
   * own; its outcome goes back to the origin (`absent` when no connection
   * here takes it, so the origin holds it again).
   */
  private deliverRemote(ev: RemoteEvent): void {
    const fanout = this.fanout!;
    // Shutting down: the origin holds it for the sidecar the user reconnects to.
    if (this.closing) {
      fanout.report(ev, 'absent');
      return;
    }
    const set = this.byUser.get(ev.user);
    let targets = 0;
    if (set !== undefined) for (const c of set) if (c.accepts(ev)) targets++;
    if (targets === 0) {
      fanout.report(ev, 'absent');
      return;
    }
    if (targets > 1) frameOf(ev);
    else measure(ev);
    this.replay.add(ev);
    if (ev.run.endMs !== undefined) this.replay.ended(ev.runId);
    const d: Delivery = { ev, remaining: targets, ok: false, late: ev.late, failReason: undefined };
    for (const c of set!) {
      if (!c.accepts(ev)) continue;
      if (!c.enqueue(d)) this.backpressure(c);
      else this.dirty.add(c);
    }
    this.scheduleFlush();
  }

  /** Origin: one remote part of delivery `d` came back (or timed out, or could not be sent). */
  private settleRemote(d: Delivery, ok: boolean, reason: DropReason | 'absent'): void {
    // `absent`: that sidecar had no connection taking it any more; unless another part delivers it, it is held again.
    this.settle(d, ok, reason === 'absent' ? 'no_subscriber' : reason, true);
  }

  /** Another sidecar's client resumes (see FanoutHost.keptForResume): what this sidecar's resume window and hold have. */
  private keptForResume(user: string, runs: Readonly<Record<string, number>>, all: boolean, skip: ReadonlySet<string>): KeptForResume {
    const events: OutboundEvent[] = [];
    const last: Record<string, number> = {};
    const held: Record<string, number[]> = {};
    const heldSeqs = this.heldSeqsOf(user);
    const add = (runId: string, afterSeq: number): void => {
      const evs = this.replay.since(runId, user, afterSeq);
      if (evs !== undefined) for (const ev of evs) events.push(ev);
      const hs = heldSeqs.get(runId);
      const lastKept = Math.max(this.replay.lastSeq(runId, user) ?? 0, hs !== undefined ? hs[hs.length - 1]! : 0);
      if (evs !== undefined || hs !== undefined) last[runId] = lastKept;
      if (hs !== undefined) held[runId] = hs.filter((q) => q > afterSeq);
    };
    for (const [runId, seq] of Object.entries(runs)) add(runId, seq);
    if (all) {
      const runIds = new Set([...this.replay.runIdsOf(user), ...heldSeqs.keys()]);
      for (const runId of runIds) if (!skip.has(runId) && !Object.hasOwn(runs, runId)) add(runId, 0);
    }
    return { events, last, held };
  }

  // ---- resume ----------------------------------------------------------------

  /**
   * Send what a reconnecting client missed: per named run of its user, every
   * retained event with seq > the last seq it names that this connection has
   * not been sent yet, ascending. With `all`, also every other retained run
   * of the user from its first retained event (runs that started while the
   * client was away and went to another of its connections). Counted as
   * delivered late; streamed at the client's pace.
   *
   * Never silent: seqs that will never come (past the window, or held and
   * given up) get an error frame per hole, `events a..b are past the resume
   * window`; runs unknown, expired or another user's get one error frame for
   * the whole resume. Error frames count against the connection's budget.
   */
  private resume(conn: Connection, runs: Record<string, number>, all = false): void {
    let n = 0;
    const wanted: Array<[string, number, boolean]> = Object.entries(runs).map(([id, seq]) => [id, seq, true]);
    // `all`: the user's other retained runs, from their start; not those named by this or an earlier resume
    // on the connection (a client names some runs in the URL and the rest in frames, `all` on the last).
    if (all) for (const id of this.replay.runIdsOf(conn.user)) if (!Object.hasOwn(runs, id) && !conn.resumedRuns?.has(id)) wanted.push([id, 0, false]);
    const unknown: string[] = [];
    let firstUnknown: string | undefined;
    let unknownCount = 0;
    /** The named runs this sidecar does not have, with the client's last seq (other sidecars may). */
    const unknownNamed: Record<string, number> = Object.create(null) as Record<string, number>;
    // Seqs of the user's events still held, per run (they follow a URL resume): read once, and only if needed.
    let held: Map<string, number[]> | undefined;
    const askable = this.fanout !== undefined && this.fanout.canAsk;
    let frontMissing = 0;
    for (const [runId, lastSeq, named] of wanted) {
      if (conn.closed) break;
      const evs = this.replay.since(runId, conn.user, lastSeq);
      held ??= this.heldSeqsOf(conn.user);
      const heldSeqs = held.get(runId);
      if (evs === undefined && heldSeqs === undefined) {
        // Unknown, expired, or another user's run: the same answer, so run ids leak nothing.
        if (unknownCount++ < NAMED_IN_ERROR) unknown.push(shortId(runId));
        firstUnknown ??= runId;
        unknownNamed[runId] = lastSeq;
        continue;
      }
      if (named && askable && (this.ledger.get(runId) === undefined || lastSeq + 1 < firstAvailable(evs, heldSeqs, lastSeq))) {
        // Another sidecar judges this run (this one only relayed some of it: not what went out while the
        // user had no connection here), or this one lacks its front (the client's other tab was on another
        // sidecar from the start): the run goes with what the others keep, merged (resumedFromOthers).
        unknownNamed[runId] = lastSeq;
        frontMissing++;
        continue;
      }
      if (named) this.noteResumed(conn, runId);
      if (!this.reportHoles(conn, runId, named ? lastSeq : undefined, evs ?? [], heldSeqs)) break;
      if (evs === undefined) continue;
      for (const ev of evs) {
        if (conn.has(runId, ev.seq) || !conn.wants(ev)) continue;
        ev.record.attempts++;
        const d: Delivery = { ev, remaining: 1, ok: false, late: true, failReason: undefined };
        n++;
        if (!conn.enqueue(d)) {
          this.backpressure(conn);
          break;
        }
      }
    }
    if (askable && !conn.closed && (unknownCount > 0 || frontMissing > 0 || (all && !conn.askedAll))) {
      // Runs this sidecar does not have (or not from where the client needs them) may be on another (the
      // client was connected there, or an edge relayed them): ask them all; the answer, or the error for
      // runs none had, comes when they answered.
      this.askOthers(conn, runs, unknownNamed, all && !conn.askedAll);
    } else this.unknownRunsError(conn, unknown, firstUnknown, unknownCount);
    if (n > 0) this.metrics.replayedEvents.inc(n);
    if (conn.dirty) this.dirty.add(conn);
  }

  /** The error for resumed runs no one has: one run in full (with run_ids), or the count and the first few. */
  private unknownRunsError(conn: Connection, unknown: readonly string[], firstUnknown: string | undefined, unknownCount: number): void {
    if (unknownCount === 1) {
      // One run (always a named one: `all` adds only runs the window has): in full as run_ids too, so a client
      // stops naming it, unless its id was cut for the message (no run id is that long).
      const gone = unknown[0] === firstUnknown ? { run_ids: [firstUnknown] } : undefined;
      this.sendErrorTo(conn, new TracewireError('TW_WS_BAD_FIELD', `runs.${unknown[0]}`, 'run unknown or outside the resume window'), gone);
    } else if (unknownCount > 1) {
      // Many: the count and the first few only, so the answer stays a small fraction of the question.
      this.sendErrorTo(conn, new TracewireError('TW_WS_BAD_FIELD', 'runs', `${unknownCount} runs unknown or outside the resume window: ${firstFew(unknown, unknownCount)}`));
    }
  }

  /**
   * Resume across sidecars: ask the others for the named runs this one does
   * not have or lacks the front of (`ask`) and, with `all`, for the user's
   * other runs. The connection holds everything back meanwhile (at most
   * `resumeWaitMillis` per ask), so what comes goes out first and each run
   * stays in seq order with the live events that arrive. A connection has
   * one ask out at a time; what further resumes ask meanwhile is merged into
   * one next ask (bounded), and `all` is asked once per connection.
   */
  private askOthers(conn: Connection, runs: Record<string, number>, ask: Record<string, number>, all: boolean): void {
    if (all) conn.askedAll = true;
    if (conn.asking) {
      const next = (conn.askNext ??= { runs: Object.create(null) as Record<string, number>, all: false, named: new Set<string>() });
      for (const [runId, seq] of Object.entries(ask)) {
        if (Object.keys(next.runs).length >= MAX_RESUME_RUNS * 4) {
          this.unknownRunsError(conn, [shortId(runId)], runId, 1);
          continue;
        }
        next.runs[runId] = seq;
      }
      next.all ||= all;
      for (const id of Object.keys(runs)) next.named.add(id);
      return;
    }
    let skip: string[] = [];
    if (all) {
      const have = new Set([...Object.keys(runs), ...(conn.resumedRuns ?? []), ...this.replay.runIdsOf(conn.user)]);
      for (const id of Object.keys(ask)) have.delete(id);
      if (have.size <= MAX_SKIP_IN_ASK) skip = [...have];
      else all = false; // too many to name: `all` stays with what this sidecar has
    }
    if (!all && Object.keys(ask).length === 0) return;
    conn.asking = true;
    conn.closeGate();
    this.fanout!.askResume(
      conn.user,
      ask,
      all,
      skip,
      (answer, complete) => this.resumedFromOthers(conn, ask, answer, complete),
      (answer) => this.resumedLate(conn, ask, answer),
      (summary) => this.resumeSettled(conn, ask, summary),
    );
  }

  /**
   * The other sidecars answered a resume (or the wait ended): each asked run
   * is what they keep merged with what this sidecar keeps, from the client's
   * last seq; holes and runs none had are reported; what comes is queued
   * ahead of what waited; then the next merged ask, or the gate opens.
   */
  private resumedFromOthers(conn: Connection, ask: Record<string, number>, answer: ResumeAnswer, complete: boolean): void {
    conn.openGate();
    conn.asking = false;
    if (conn.closed) return;
    const unknown: string[] = [];
    let firstUnknown: string | undefined;
    let unknownCount = 0;
    const heldHere = this.heldSeqsOf(conn.user);
    const ds: Delivery[] = [];
    // The named runs, and every run the others keep for `all` (with events, or only their last seq when an answer was cut).
    const runIds = new Set([...Object.keys(ask), ...answer.events.keys(), ...answer.last.keys(), ...answer.held.keys()]);
    for (const runId of runIds) {
      if (conn.closed) break;
      const named = Object.hasOwn(ask, runId);
      const after = named ? ask[runId]! : 0;
      const remote = answer.events.get(runId) ?? [];
      const local = named ? (this.replay.since(runId, conn.user, after) ?? []) : [];
      const evs = mergeBySeq(remote, local);
      const held = mergeSeqs(answer.held.get(runId), heldHere.get(runId));
      const last = Math.max(answer.last.get(runId) ?? 0, this.replay.lastSeq(runId, conn.user) ?? 0);
      if (evs.length === 0 && held === undefined && !answer.last.has(runId) && this.replay.lastSeq(runId, conn.user) === undefined) {
        // Unknown, unless a sidecar that has not answered yet has it (told in resumeSettled).
        if (complete) {
          if (unknownCount++ < NAMED_IN_ERROR) unknown.push(shortId(runId));
          firstUnknown ??= runId;
        }
        continue;
      }
      if (named) this.noteResumed(conn, runId);
      // Holes only once every sidecar answered: a late answer may fill them (resumeSettled tells the rest).
      if (complete) {
        if (!this.reportHoles(conn, runId, named ? after : undefined, evs, held)) break;
        // What a sidecar keeps past what it sent (its answer was cut at its size bound) is a hole too.
        if (!this.reportTail(conn, runId, last, Math.max(evs.length > 0 ? evs[evs.length - 1]!.seq : after, held !== undefined ? held[held.length - 1]! : 0, after))) break;
      }
      for (const ev of evs) {
        if (!conn.wants(ev)) continue;
        if (ev instanceof RemoteEvent) this.keepFetched(ev);
        ev.record.attempts++;
        ds.push({ ev, remaining: 1, ok: false, late: true, failReason: undefined });
      }
    }
    if (!conn.closed) {
      this.unknownRunsError(conn, unknown, firstUnknown, unknownCount);
      const queued = conn.enqueueFirst(ds);
      if (queued > 0) this.metrics.replayedEvents.inc(queued);
      const next = conn.askNext;
      conn.askNext = undefined;
      if (next !== undefined) {
        // What waited goes out before the next question holds things back again (a client that keeps
        // resuming must not starve its own live events).
        conn.flush();
        this.askOthers(conn, Object.fromEntries([...next.named].map((id) => [id, 0])), next.runs, next.all);
      }
    }
    if (conn.dirty) this.dirty.add(conn);
    this.scheduleFlush();
  }

  /** An event fetched from another sidecar for a resume is kept in this one's window too: a later resume here finds it. */
  private keepFetched(ev: RemoteEvent): void {
    measure(ev);
    this.replay.add(ev);
    if (ev.run.endMs !== undefined) this.replay.ended(ev.runId);
  }

  /** A hole at a run's end: `last` is kept somewhere, the client gets up to `got`. False if the connection closed. */
  private reportTail(conn: Connection, runId: string, last: number, got: number): boolean {
    if (last <= got) return true;
    return this.sendErrorTo(conn, new TracewireError('TW_WS_BAD_FIELD', `runs.${runId}`, `events ${got + 1}..${last} are past the resume window`), { run_id: runId, from_seq: got + 1, to_seq: last });
  }

  /**
   * A resume whose wait ended before every sidecar answered: once no more
   * answers are taken, tell the client what it will not get (holes, runs no
   * one has), judged from what its connection was sent or queued since,
   * what is held, and what every answer said is kept.
   */
  private resumeSettled(conn: Connection, ask: Record<string, number>, summary: ResumeSummary): void {
    if (conn.closed) return;
    const unknown: string[] = [];
    let firstUnknown: string | undefined;
    let unknownCount = 0;
    const heldHere = this.heldSeqsOf(conn.user);
    const runIds = new Set([...Object.keys(ask), ...summary.last.keys(), ...summary.held.keys()]);
    for (const runId of runIds) {
      const named = Object.hasOwn(ask, runId);
      const after = named ? ask[runId]! : 0;
      const held = mergeSeqs(summary.held.get(runId), heldHere.get(runId));
      const last = Math.max(summary.last.get(runId) ?? 0, this.replay.lastSeq(runId, conn.user) ?? 0, held !== undefined ? held[held.length - 1]! : 0);
      const have: Array<{ seq: number }> = [];
      for (let q = after + 1; q <= last; q++) if (conn.has(runId, q)) have.push({ seq: q });
      if (last === 0 && have.length === 0 && !conn.has(runId, after + 1)) {
        if (named) {
          if (unknownCount++ < NAMED_IN_ERROR) unknown.push(shortId(runId));
          firstUnknown ??= runId;
        }
        continue;
      }
      if (!this.reportHoles(conn, runId, named ? after : undefined, have, held)) return;
      if (!this.reportTail(conn, runId, last, Math.max(have.length > 0 ? have[have.length - 1]!.seq : after, held !== undefined ? held[held.length - 1]! : 0, after))) return;
    }
    this.unknownRunsError(conn, unknown, firstUnknown, unknownCount);
  }

  /**
   * A sidecar answered a resume after the wait ended: what it has that the
   * connection lacks is sent now, behind what went out meanwhile (a client
   * that orders by seq, as tracewire/client does, puts it back in place).
   */
  private resumedLate(conn: Connection, ask: Record<string, number>, answer: ResumeAnswer): void {
    if (conn.closed) return;
    let n = 0;
    for (const [runId, evs] of answer.events) {
      const after = Object.hasOwn(ask, runId) ? ask[runId]! : 0;
      for (const ev of evs) {
        if (ev.seq <= after || conn.has(runId, ev.seq) || !conn.wants(ev)) continue;
        this.keepFetched(ev);
        ev.record.attempts++;
        n++;
        if (!conn.enqueue({ ev, remaining: 1, ok: false, late: true, failReason: undefined })) {
          this.backpressure(conn);
          return;
        }
      }
    }
    if (n > 0) this.metrics.replayedEvents.inc(n);
    if (conn.dirty) this.dirty.add(conn);
    this.scheduleFlush();
  }

  /**
   * Remember that a resume on `conn` named `runId` (a run the hub has for its
   * user). Bounded: past a threshold the runs that left the resume window go
   * (`all` can no longer send them anyway) and the threshold doubles; past
   * MAX_RESUME_RUNS × 4 the earliest named go.
   */
  private noteResumed(conn: Connection, runId: string): void {
    const set = (conn.resumedRuns ??= new Set());
    set.add(runId);
    if (set.size <= conn.resumedPruneAt) return;
    for (const id of set) if (!this.replay.contains(id)) set.delete(id);
    for (const id of set) {
      if (set.size <= MAX_RESUME_RUNS * 4) break;
      set.delete(id);
    }
    conn.resumedPruneAt = Math.max(RESUMED_PRUNE_FROM, set.size * 2);
  }

  /** The seqs of the events held for `user`, per run, ascending (events of a run are held in seq order). */
  private heldSeqsOf(user: string): Map<string, number[]> {
    const bySeq = new Map<string, number[]>();
    const list = this.heldByUser.get(user);
    if (list === undefined) return bySeq;
    for (const rec of list) {
      if (!rec.inHold) continue;
      const seqs = bySeq.get(rec.run.runId);
      if (seqs === undefined) bySeq.set(rec.run.runId, [rec.seq]);
      else seqs.push(rec.seq);
    }
    return bySeq;
  }

  /**
   * Tell the client about every hole in what it will get of a run: the seqs
   * after `lastSeq` (undefined: from the first one available) that are neither
   * in the window (`evs`, ascending, all after lastSeq) nor held (`heldSeqs`).
   * One error frame per hole. False if the connection was closed meanwhile.
   */
  private reportHoles(conn: Connection, runId: string, lastSeq: number | undefined, evs: readonly { readonly seq: number }[], heldSeqs: readonly number[] | undefined): boolean {
    const after = lastSeq ?? 0;
    let next = lastSeq === undefined ? undefined : lastSeq + 1;
    let i = 0;
    let j = 0;
    const hs = heldSeqs ?? [];
    while (j < hs.length && hs[j]! <= after) j++;
    for (;;) {
      // The next seq available, from the window or the hold.
      let seq: number;
      if (i < evs.length && (j >= hs.length || evs[i]!.seq <= hs[j]!)) seq = evs[i++]!.seq;
      else if (j < hs.length) seq = hs[j++]!;
      else return true;
      if (next !== undefined && seq > next) {
        const hole = { run_id: runId, from_seq: next, to_seq: seq - 1 };
        if (!this.sendErrorTo(conn, new TracewireError('TW_WS_BAD_FIELD', `runs.${runId}`, `events ${next}..${seq - 1} are past the resume window`), hole)) return false;
      }
      if (next === undefined || seq >= next) next = seq + 1;
    }
  }

  // ---- delivery outcomes ------------------------------------------------------

  /**
   * One part of a delivery completed: a connection's write, or (`remote`)
   * another sidecar's report. The event is delivered when the first part
   * succeeds; dropped, with the reason that names the failure best, when
   * the last part fails; held again when the only failures are sidecars
   * whose user had left (`no_subscriber` from a remote part).
   */
  private settle(d: Delivery, ok: boolean, reason: DropReason | undefined, remote = false): void {
    const ev = d.ev;
    if (this.fanout !== undefined && ev instanceof RemoteEvent) {
      this.settleForOrigin(d, ev, ok, reason);
      return;
    }
    if (this.opts.failWritesFor !== undefined && ok && !remote && this.opts.failWritesFor(d.ev.user)) {
      ok = false;
      reason = 'send_failed';
    }
    d.remaining--;
    if (ok) {
      d.ev.record.connections++;
      if (!d.ok) {
        d.ok = true;
        this.ledger.markDelivered(d.ev.run, d.ev.record, d.late);
        // Remote parts are not timed: the hook-to-write time is the other sidecar's, and the clocks differ.
        if (d.ev.hookAt !== undefined && !d.late && !remote) {
          const seconds = (performance.now() - d.ev.hookAt) / 1000;
          // Exemplars (trace ids) for slow deliveries and one in 64 of the rest: each costs a label hash.
          const exemplar = seconds > 0.001 || (++this.exemplarTick & 63) === 1;
          this.metrics.deliverySeconds.observe(d.ev.type, seconds, exemplar ? { trace_id: d.ev.traceId } : undefined);
        }
      }
      return;
    }
    // The reason that names the failure best: backpressure and shutdown outrank a plain write error, which
    // outranks a sidecar whose user had left.
    const r = reason ?? 'send_failed';
    if (d.failReason === undefined || d.failReason === 'no_subscriber' || (d.failReason === 'send_failed' && r !== 'no_subscriber')) d.failReason = r;
    if (d.remaining > 0 || d.ok) return;
    if (d.failReason === 'no_subscriber' && ev.run.user !== undefined) this.hold(ev.record, ev, this.now());
    else this.ledger.markDropped(ev.run, ev.record, d.failReason ?? 'send_failed');
  }

  /** Edge: a write of an event from another sidecar completed or failed; its origin hears the outcome once. */
  private settleForOrigin(d: Delivery, ev: RemoteEvent, ok: boolean, reason: DropReason | undefined): void {
    if (this.opts.failWritesFor !== undefined && ok && this.opts.failWritesFor(ev.user)) {
      ok = false;
      reason = 'send_failed';
    }
    d.remaining--;
    if (ok) {
      if (d.ok) return;
      d.ok = true;
      // A live event: its outcome, awaited by its origin. A resume delivery: its origin counts it too.
      if (ev.reportId !== 0) this.fanout!.report(ev, undefined);
      else if (d.late) this.fanout!.reportResumed(ev);
      return;
    }
    if (d.failReason === undefined || d.failReason === 'send_failed') d.failReason = reason;
    if (d.remaining > 0 || d.ok) return;
    // Not written because this sidecar shuts down: the origin holds it for the sidecar the user reconnects to.
    this.fanout!.report(ev, d.failReason === 'shutdown' ? 'absent' : (d.failReason ?? 'send_failed'));
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(() => this.flush());
  }

  /** Write every dirty connection's batch now (each up to what its socket takes; the rest follows on drain). */
  flush(): void {
    this.flushScheduled = false;
    for (const c of this.dirty) c.flush();
    this.dirty.clear();
  }

  // ---- closing connections ---------------------------------------------------

  /**
   * The client is not reading: give up its queue (those events count as
   * dropped for backpressure unless another connection of the user got them;
   * they stay resumable), then close with 4408. The close frame waits behind
   * at most the socket's small buffer; if the client does not read it within
   * wsCloseGraceMillis, the socket is destroyed.
   */
  private backpressure(conn: Connection): void {
    const buffered = conn.bufferedBytes;
    this.closeWith(conn, new TracewireError('TW_WS_BACKPRESSURE', buffered, this.opts.wsMaxBufferedBytes), 'backpressure', 'backpressure');
  }

  private closeWith(conn: Connection, e: TracewireError, reason: DisconnectReason, dropReason: DropReason): void {
    if (conn.closed) return;
    this.forget(conn, reason, dropReason);
    this.sendError(conn.ws, e);
    try {
      conn.ws.close(e.closeCode ?? 1011, e.code);
    } catch {
      /* already closing */
    }
    conn.closeTimer = setTimeout(() => conn.ws.terminate(), this.closeGraceMillis);
    conn.closeTimer.unref();
  }

  /** Take a connection out of routing; whatever is still queued for it fails with `dropReason`. */
  private forget(conn: Connection, reason: DisconnectReason, dropReason: DropReason): void {
    if (conn.closed) return;
    conn.closed = true;
    conn.closeReason = dropReason;
    if (conn.expiryTimer) clearTimeout(conn.expiryTimer);
    this.all.delete(conn);
    this.dirty.delete(conn);
    const set = this.byUser.get(conn.user);
    if (set !== undefined) {
      set.delete(conn);
      if (set.size === 0) {
        this.byUser.delete(conn.user);
        this.fanout?.userOffline(conn.user);
      }
    }
    conn.failQueued(dropReason);
    this.metrics.disconnects.inc({ reason });
  }

  private onClose(conn: Connection, code: number): void {
    if (conn.closeTimer) clearTimeout(conn.closeTimer);
    this.forget(conn, this.closing ? 'shutdown' : code === 1006 ? 'abnormal' : 'client_close', this.closing ? 'shutdown' : 'send_failed');
  }

  // ---- client frames -----------------------------------------------------------

  private onClientFrame(conn: Connection, data: Buffer, isBinary: boolean): void {
    if (conn.closed) return;
    let msg: unknown;
    try {
      if (isBinary) throw new Error('binary frame');
      msg = JSON.parse(data.toString('utf8'));
      if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) throw new Error('not an object');
    } catch (err) {
      this.badFrame(conn, new TracewireError('TW_WS_BAD_FRAME', (err as Error).message));
      return;
    }
    const m = msg as Record<string, unknown>;
    switch (m.type) {
      case 'resume': {
        const runs = m.runs ?? {};
        if (runs === null || typeof runs !== 'object' || Array.isArray(runs) || !Object.values(runs).every((v) => Number.isInteger(v) && (v as number) >= 0)) {
          this.badFrame(conn, new TracewireError('TW_WS_BAD_FIELD', 'runs', 'expected an object of run_id -> last seq (integer >= 0)'));
          return;
        }
        const named = Object.keys(runs).length;
        if (named > MAX_RESUME_RUNS) {
          this.badFrame(conn, new TracewireError('TW_WS_BAD_FIELD', 'runs', `names ${named} runs, at most ${MAX_RESUME_RUNS} per resume frame; send several frames`));
          return;
        }
        if (m.all !== undefined && typeof m.all !== 'boolean') {
          this.badFrame(conn, new TracewireError('TW_WS_BAD_FIELD', 'all', 'expected a boolean'));
          return;
        }
        this.resume(conn, runs as Record<string, number>, m.all === true);
        this.scheduleFlush();
        return;
      }
      case 'ack': {
        if (typeof m.run_id !== 'string' || !Number.isInteger(m.seq)) {
          this.badFrame(conn, new TracewireError('TW_WS_BAD_FIELD', 'run_id/seq', 'expected {"type":"ack","run_id":string,"seq":integer}'));
          return;
        }
        this.ack(conn, m.run_id, m.seq as number);
        return;
      }
      case 'ping':
        this.sendControl(conn, PONG);
        return;
      default:
        this.badFrame(conn, new TracewireError('TW_WS_UNKNOWN_TYPE', String(m.type)));
    }
  }

  /**
   * Cumulative: the client has the run's events up to `seq`, except those
   * never delivered (dropped or still held: a gap the client was told of),
   * which stay unacknowledged (marked passed, so the next ack's walk stops
   * at them too). Cost is the number of events newly covered.
   */
  private ack(conn: Connection, runId: string, seq: number): void {
    // A run judged by another sidecar (relayed here): the ack goes to it.
    if (!this.ackRun(runId, conn.user, seq) && this.fanout !== undefined) this.fanout.forwardAck(runId, conn.user, seq);
  }

  /** Ack `user`'s run up to `seq` (see `ack`); false if this sidecar has no such run of the user. */
  private ackRun(runId: string, user: string, seq: number): boolean {
    const rec = this.ledger.get(runId);
    if (rec === undefined || rec.user !== user) return false;
    const evs = rec.events;
    // Events are kept in seq order; stop at the first one an earlier ack covered (everything below it was too).
    for (let i = Math.min(seq, evs.length) - 1; i >= 0; i--) {
      const ev = evs[i]!;
      if (ev.seq > seq) continue;
      if (ev.acked || ev.ackPassed) break;
      if (ev.state === EV_DELIVERED) ev.acked = true;
      // Written, its outcome not in yet (a write callback, or another sidecar's report, can come after the
      // client's ack): acked when it is counted delivered (RunRecord.ackedUpTo).
      else if (ev.state === EV_PENDING) continue;
      else ev.ackPassed = true;
    }
    if (seq > rec.ackedUpTo) rec.ackedUpTo = seq;
    return true;
  }

  private badFrame(conn: Connection, e: TracewireError): void {
    conn.badFrames++;
    this.metrics.clientFrameErrors.inc({ code: e.code as ErrorCode });
    if (conn.badFrames >= MAX_BAD_FRAMES) {
      this.closeWith(conn, new TracewireError('TW_WS_TOO_MANY_BAD_FRAMES', conn.badFrames), 'bad_frames', 'send_failed');
      return;
    }
    this.sendErrorTo(conn, e);
  }

  /**
   * A client frame over MAX_CLIENT_FRAME_BYTES (called by `ws`'s receiver as
   * it reads the frame's length, before `ws` closes with 1009): counted as a
   * client error, answered with the error frame and a close 1009 handshake.
   */
  private frameTooLarge(conn: Connection): void {
    if (conn.closed) return;
    this.metrics.clientFrameErrors.inc({ code: 'TW_WS_FRAME_TOO_LARGE' });
    // `ws` reports the error next: the close handshake (and the grace timer) end the socket, not a terminate.
    this.closingOnError.add(conn.ws);
    this.closeWith(conn, new TracewireError('TW_WS_FRAME_TOO_LARGE', MAX_CLIENT_FRAME_BYTES), 'bad_frames', 'send_failed');
  }

  // ---- liveness and expiry -------------------------------------------------------

  private beat(): void {
    for (const c of [...this.all]) {
      if (!c.alive) {
        // No pong since the last ping: the peer is gone or not reading. Best-effort error and close frames, then terminate.
        this.forget(c, 'heartbeat_timeout', 'send_failed');
        this.sendError(c.ws, new TracewireError('TW_WS_HEARTBEAT_TIMEOUT', this.opts.wsHeartbeatMillis));
        try {
          c.ws.close(4409, 'TW_WS_HEARTBEAT_TIMEOUT');
        } catch {
          /* closing already */
        }
        c.ws.terminate();
        continue;
      }
      c.alive = false;
      try {
        c.ws.ping();
      } catch {
        /* socket gone; close will follow */
      }
    }
  }

  /**
   * Close the connection with TW_AUTH_EXPIRED when its token expires. A Node
   * timer waits at most MAX_TIMER_MILLIS (~24.8 days): a token valid for
   * longer is re-armed until its expiry has really come.
   */
  private armExpiry(conn: Connection, expiresAtMs: number): void {
    conn.expiryTimer = setTimeout(
      () => {
        if (this.now() < expiresAtMs) this.armExpiry(conn, expiresAtMs);
        else this.closeWith(conn, new TracewireError('TW_AUTH_EXPIRED', new Date(expiresAtMs).toISOString()), 'token_expired', 'unauthorised');
      },
      Math.max(0, Math.min(expiresAtMs - this.now(), MAX_TIMER_MILLIS)),
    );
    conn.expiryTimer.unref();
  }

  private sweep(): void {
    this.replay.sweep();
    const cutoff = this.now() - this.opts.replayRetentionMillis;
    const users = new Set<string>();
    for (let at = this.heldAt.peek(); at !== undefined && at <= cutoff; at = this.heldAt.peek()) {
      this.heldAt.shift();
      const rec = this.heldQ.shift()!;
      if (!rec.inHold) continue;
      users.add(rec.run.user ?? '');
      this.unheld(rec);
      this.ledger.markDropped(rec.run, rec, 'no_subscriber');
    }
    for (const u of users) this.trimUser(u);
  }

  // ---- shutdown --------------------------------------------------------------------

  /**
   * Graceful shutdown: refuse new connections, write every queued event,
   * close each connection with 1001 (going away; the client reconnects and
   * resumes), and resolve once every connection has closed or
   * `timeoutMillis` passed (then the rest are terminated). Events whose write
   * did not complete, and events still held, are dropped as `shutdown`.
   */
  async close(timeoutMillis = 5000): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    // Other sidecars stop sending here (events, outcomes and acks still flow while connections drain).
    this.fanout?.leave();
    if (this.heartbeat) clearInterval(this.heartbeat);
    clearInterval(this.sweeper);
    this.flushScheduled = false;
    this.dirty.clear();
    const conns = [...this.all];
    const closed = conns.map(
      (c) =>
        new Promise<void>((resolve) => {
          if (c.ws.readyState === c.ws.CLOSED) return resolve();
          c.ws.once('close', () => resolve());
        }),
    );
    for (const c of conns) {
      c.closeReason = 'shutdown';
      c.flush(true);
      this.sendError(c.ws, new TracewireError('TW_WS_SHUTDOWN'));
      try {
        c.ws.close(1001, 'TW_WS_SHUTDOWN');
      } catch {
        /* closing already */
      }
    }
    // Upgrades whose token is still being verified are refused with 1001 as they finish (before the server below closes).
    if (this.pendingUpgrades > 0) closed.push(new Promise<void>((resolve) => (this.upgradesSettled = resolve)));
    // Outcomes of events sent to other sidecars come back within the same wait.
    if (this.fanout !== undefined) closed.push(this.fanout.drain(timeoutMillis));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(closed),
      new Promise<void>((r) => {
        timer = setTimeout(r, timeoutMillis);
      }),
    ]);
    if (timer) clearTimeout(timer);
    for (const c of conns) {
      this.forget(c, 'shutdown', 'shutdown');
      c.ws.terminate();
    }
    // Terminated sockets report their unfinished writes on the next ticks.
    await new Promise((r) => setImmediate(r));
    for (const rec of this.heldQ) {
      if (!rec.inHold) continue;
      this.unheld(rec);
      this.ledger.markDropped(rec.run, rec, 'shutdown');
    }
    this.heldByUser.clear();
    this.heldQ.clear();
    this.heldAt.clear();
    this.heldEvents.clear();
    this.replay.clear();
    // What no other sidecar confirmed is dropped as shutdown; reports of what this one wrote go out first.
    await this.fanout?.close();
    this.closed = true;
    for (const u of this.untrack) u();
    this.wss.close();
  }

  /** Introspection for tests and the inspector. */
  stats(): { connections: number; users: number; held: number; heldBytes: number; replayRuns: number; replayBytes: number; queuedBytes: number } {
    let queued = 0;
    for (const c of this.all) queued += c.bufferedBytes;
    return { connections: this.all.size, users: this.byUser.size, held: this.heldCount, heldBytes: this.heldBytes, replayRuns: this.replay.size, replayBytes: this.replay.bytes, queuedBytes: queued };
  }
}

/**
 * Held events in the order to send them: hold order, except that each run's
 * events go in seq order (an event held again after another sidecar turned it
 * down comes back behind later events of its run).
 */
function inRunOrder(list: Fifo<EventRecord>): Fifo<EventRecord> {
  const recs: EventRecord[] = [];
  for (let rec = list.shift(); rec !== undefined; rec = list.shift()) if (rec.inHold) recs.push(rec);
  const out = new Fifo<EventRecord>();
  let sorted = true;
  const last = new Map<string, number>();
  for (const r of recs) {
    const prev = last.get(r.run.runId);
    if (prev !== undefined && prev > r.seq) sorted = false;
    last.set(r.run.runId, r.seq);
  }
  if (!sorted) {
    // Runs keep the place of their first held event; within a run, seq order (a stable sort).
    const first = new Map<string, number>();
    recs.forEach((r, i) => {
      if (!first.has(r.run.runId)) first.set(r.run.runId, i);
    });
    recs.sort((a, b) => first.get(a.run.runId)! - first.get(b.run.runId)! || a.seq - b.seq);
  }
  for (const r of recs) out.push(r);
  return out;
}

/** The first seq after `lastSeq` that a resume can send from here: retained (`evs`, ascending) or held. */
function firstAvailable(evs: readonly OutboundEvent[] | undefined, held: readonly number[] | undefined, lastSeq: number): number {
  let first = Infinity;
  if (evs !== undefined && evs.length > 0) first = evs[0]!.seq;
  if (held !== undefined) for (const q of held) if (q > lastSeq && q < first) first = q;
  // Nothing after lastSeq here: the client is up to date as far as this sidecar knows.
  return first === Infinity ? lastSeq + 1 : first;
}

/** Two ascending event lists as one, ascending, each seq once. */
function mergeBySeq(a: readonly OutboundEvent[], b: readonly OutboundEvent[]): OutboundEvent[] {
  if (b.length === 0) return a as OutboundEvent[];
  const out: OutboundEvent[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    const x = i < a.length ? a[i]! : undefined;
    const y = j < b.length ? b[j]! : undefined;
    const next = y === undefined || (x !== undefined && x.seq <= y.seq) ? x! : y;
    if (next === x) i++;
    else j++;
    if (out.length === 0 || out[out.length - 1]!.seq !== next.seq) out.push(next);
  }
  return out;
}
