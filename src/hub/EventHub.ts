import type { IncomingMessage, Server } from 'node:http';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { WebSocketServer, type WebSocket } from 'ws';
import type { DISCONNECT_REASONS, DropReason, Metrics } from '../audit/Metrics.js';
import type { RunLedger } from '../audit/RunLedger.js';
import type { EventRecord } from '../audit/RunRecord.js';
import { OutboundEvent, type EventSink } from '../bridge/EventSink.js';
import { TracewireError, type ErrorCode } from '../errors/errors.js';
import { JwtVerifier, PROTOCOL, tokenFrom, type Principal } from './auth.js';
import { Connection, type Delivery } from './Connection.js';
import { Fifo, NumberFifo } from '../util/Fifo.js';
import { frameOf, frameSize } from './frame.js';
import { ReplayStore } from './ReplayStore.js';

export interface EventHubOptions {
  readonly jwtSecret: string;
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

/** The URL of an upgrade request's target (origin form; `//x` is a path, not a host), or undefined if it is not one. */
function requestUrl(target: string | undefined): URL | undefined {
  try {
    return new URL(`http://localhost${target?.startsWith('/') ? target : `/${target ?? ''}`}`);
  } catch {
    return undefined;
  }
}

const SHUTTING_DOWN_RESPONSE = 'HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n';
const MAX_BAD_FRAMES = 10;

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
  private readonly now: () => number;
  private exemplarTick = 0;
  private readonly metrics: Metrics;
  private readonly ledger: RunLedger;
  private readonly closeGraceMillis: number;
  private readonly untrack: Array<() => void>;
  private readonly onDone = (d: Delivery, ok: boolean, reason: DropReason | undefined): void => this.settle(d, ok, reason);
  private readonly isRetained = (runId: string): boolean => this.replay.contains(runId);

  constructor(private readonly opts: EventHubOptions) {
    this.path = opts.path ?? '/v1/events';
    this.now = opts.now ?? Date.now;
    this.metrics = opts.metrics;
    this.ledger = opts.ledger;
    this.maxHeld = opts.maxHeldEvents ?? 200_000;
    this.maxHeldBytes = opts.maxHeldBytes ?? 64 * 1024 * 1024;
    this.closeGraceMillis = opts.wsCloseGraceMillis ?? 1000;
    this.verifier = new JwtVerifier(opts.jwtSecret);
    this.wss = new WebSocketServer({
      noServer: true,
      perMessageDeflate: false,
      maxPayload: 64 * 1024,
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
    if (this.closing) {
      socket.end(SHUTTING_DOWN_RESPONSE);
      return true;
    }
    this.verifier.verify(tokenFrom(req, url)).then(
      (p) => this.upgrade(req, socket, head, (ws) => this.open(ws, socket, p, url)),
      (err: unknown) => this.upgrade(req, socket, head, (ws) => this.refuse(ws, err)),
    );
    return true;
  }

  private upgrade(req: IncomingMessage, socket: Socket, head: Buffer, then: (ws: WebSocket) => void): void {
    if (socket.destroyed) return;
    if (this.closing) {
      socket.end(SHUTTING_DOWN_RESPONSE);
      return;
    }
    try {
      this.wss.handleUpgrade(req, socket, head, (ws) => {
        ws.on('error', () => ws.terminate());
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

  private sendError(ws: WebSocket, e: TracewireError): void {
    if (ws.readyState !== 1) return;
    try {
      ws.send(JSON.stringify({ type: 'error', ...e.toJSON() }));
    } catch {
      /* closed already */
    }
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
    this.metrics.connectionAttempts.inc({ result: 'accepted' });

    ws.on('pong', () => {
      conn.alive = true;
    });
    ws.on('message', (data, isBinary) => this.onClientFrame(conn, data as Buffer, isBinary));
    ws.on('close', (code) => this.onClose(conn, code));
    if (p.expiresAtMs !== undefined) {
      const wait = p.expiresAtMs - this.now();
      conn.expiryTimer = setTimeout(() => {
        this.closeWith(conn, new TracewireError('TW_AUTH_EXPIRED', new Date(p.expiresAtMs!).toISOString()), 'token_expired', 'unauthorised');
      }, Math.max(0, Math.min(wait, 2 ** 31 - 1)));
      conn.expiryTimer.unref();
    }

    ws.send(JSON.stringify({ type: 'ack', protocol: PROTOCOL, user: p.user, connection_id: conn.id, conversation_id: conversation ?? null }));

    // Resume named in the URL first (?resume=<run_id>:<seq>,...[&resume_all=1]), then events held while the user had no connection.
    const resume = url.searchParams.get('resume');
    const resumeAll = url.searchParams.get('resume_all');
    if (resume || resumeAll === '1' || resumeAll === 'true') {
      const runs: Record<string, number> = {};
      for (const part of (resume ?? '').split(',')) {
        const i = part.lastIndexOf(':');
        const seq = Number(part.slice(i + 1));
        if (i > 0 && Number.isInteger(seq) && seq >= 0) runs[part.slice(0, i)] = seq;
        else if (part !== '') this.sendError(ws, new TracewireError('TW_WS_BAD_FIELD', 'resume', `"${part.slice(0, 200)}" is not <run_id>:<seq>`));
      }
      this.resume(conn, runs, resumeAll === '1' || resumeAll === 'true');
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
    this.deliver(ev, this.byUser.get(ev.user), this.now());
  }

  publishRecord(record: EventRecord, hookAt: number | undefined, atMs: number): void {
    if (this.closed) {
      this.ledger.markDropped(record.run, record, 'shutdown');
      return;
    }
    const set = this.byUser.get(record.run.user ?? '');
    // No connection of its user: held as the record alone (its event object is made when one takes it).
    if (set === undefined) this.hold(record, undefined, atMs);
    else this.deliver(OutboundEvent.ofRecord(record, hookAt), set, atMs);
  }

  /** Send an event to the connections of its user (`set`) that take it, or hold it (from `atMs`) if none does. */
  private deliver(ev: OutboundEvent, set: Set<Connection> | undefined, atMs: number): void {
    let targets = 0;
    if (set !== undefined) for (const c of set) if (c.accepts(ev)) targets++;
    if (targets === 0) {
      // Held, not serialised and not in the resume window yet: both happen when a connection takes it.
      this.hold(ev.record, ev, atMs);
      return;
    }
    // Framed once for several connections (which measures it); one connection writes it straight into its batch.
    if (targets > 1) frameOf(ev);
    else measure(ev);
    this.replay.add(ev);
    ev.run.sawConnection = true;
    const d: Delivery = { ev, remaining: targets, ok: false, late: false, failReason: undefined };
    for (const c of set!) {
      if (!c.accepts(ev)) continue;
      ev.record.attempts++;
      if (!c.enqueue(d)) this.backpressure(c);
      else this.dirty.add(c);
    }
    this.scheduleFlush();
  }

  runEnded(runId: string): void {
    this.replay.ended(runId);
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
    const held = this.heldByUser.get(conn.user);
    if (held === undefined) return;
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

  // ---- resume ----------------------------------------------------------------

  /**
   * Send what a reconnecting client missed: per named run of its user, every
   * retained event with seq > the last seq it names that this connection has
   * not been sent yet, ascending. With `all`, also every other retained run
   * of the user from its first retained event (runs that started while the
   * client was away and went to another of its connections). Counted as
   * delivered late; streamed at the client's pace.
   */
  private resume(conn: Connection, runs: Record<string, number>, all = false): void {
    let n = 0;
    const wanted: Array<[string, number, boolean]> = Object.entries(runs).map(([id, seq]) => [id, seq, true]);
    if (all) for (const id of this.replay.runIdsOf(conn.user)) if (!Object.hasOwn(runs, id)) wanted.push([id, 0, false]);
    for (const [runId, lastSeq, named] of wanted) {
      if (conn.closed) break;
      const evs = this.replay.since(runId, conn.user, lastSeq);
      if (evs === undefined) {
        // Unknown, expired, or another user's run: the same answer, so run ids leak nothing.
        this.sendError(conn.ws, new TracewireError('TW_WS_BAD_FIELD', `runs.${runId}`, 'run unknown or outside the resume window'));
        continue;
      }
      const first = this.replay.firstSeq(runId);
      if (named && first !== undefined && first > lastSeq + 1) {
        this.sendError(conn.ws, new TracewireError('TW_WS_BAD_FIELD', `runs.${runId}`, `events ${lastSeq + 1}..${first - 1} are past the resume window`));
      }
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
    if (n > 0) this.metrics.replayedEvents.inc(n);
    if (conn.dirty) this.dirty.add(conn);
  }

  // ---- delivery outcomes ------------------------------------------------------

  private settle(d: Delivery, ok: boolean, reason: DropReason | undefined): void {
    if (this.opts.failWritesFor !== undefined && ok && this.opts.failWritesFor(d.ev.user)) {
      ok = false;
      reason = 'send_failed';
    }
    d.remaining--;
    if (ok) {
      d.ev.record.connections++;
      if (!d.ok) {
        d.ok = true;
        this.ledger.markDelivered(d.ev.run, d.ev.record, d.late);
        if (d.ev.hookAt !== undefined && !d.late) {
          const seconds = (performance.now() - d.ev.hookAt) / 1000;
          // Exemplars (trace ids) for slow deliveries and one in 64 of the rest: each costs a label hash.
          const exemplar = seconds > 0.001 || (++this.exemplarTick & 63) === 1;
          this.metrics.deliverySeconds.observe(d.ev.type, seconds, exemplar ? { trace_id: d.ev.traceId } : undefined);
        }
      }
      return;
    }
    // The reason that names the failure best: backpressure and shutdown outrank a plain write error.
    if (d.failReason === undefined || d.failReason === 'send_failed') d.failReason = reason;
    if (d.remaining <= 0 && !d.ok) this.ledger.markDropped(d.ev.run, d.ev.record, d.failReason ?? 'send_failed');
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
      if (set.size === 0) this.byUser.delete(conn.user);
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
        conn.ws.send(JSON.stringify({ type: 'pong' }));
        return;
      default:
        this.badFrame(conn, new TracewireError('TW_WS_UNKNOWN_TYPE', String(m.type)));
    }
  }

  /** Cumulative: the client has every event of the run up to `seq`. Cost is the number of newly acked events. */
  private ack(conn: Connection, runId: string, seq: number): void {
    const rec = this.ledger.get(runId);
    if (rec === undefined || rec.user !== conn.user) return;
    const evs = rec.events;
    // Events are kept in seq order; stop at the first one already acked (everything below it is too).
    for (let i = Math.min(seq, evs.length) - 1; i >= 0; i--) {
      const ev = evs[i]!;
      if (ev.seq > seq) continue;
      if (ev.acked) break;
      ev.acked = true;
    }
  }

  private badFrame(conn: Connection, e: TracewireError): void {
    conn.badFrames++;
    this.metrics.clientFrameErrors.inc({ code: e.code as ErrorCode });
    if (conn.badFrames >= MAX_BAD_FRAMES) {
      this.closeWith(conn, new TracewireError('TW_WS_TOO_MANY_BAD_FRAMES', conn.badFrames), 'bad_frames', 'send_failed');
      return;
    }
    this.sendError(conn.ws, e);
  }

  // ---- liveness and expiry -------------------------------------------------------

  private beat(): void {
    for (const c of [...this.all]) {
      if (!c.alive) {
        // No pong since the last ping: the peer is gone or not reading. Best-effort close frame, then terminate.
        this.forget(c, 'heartbeat_timeout', 'send_failed');
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
