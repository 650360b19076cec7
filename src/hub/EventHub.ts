import type { IncomingMessage, Server } from 'node:http';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { WebSocketServer, type WebSocket } from 'ws';
import type { DropReason, Metrics } from '../audit/Metrics.js';
import type { RunLedger } from '../audit/RunLedger.js';
import type { EventSink, OutboundEvent } from '../bridge/EventSink.js';
import { TracewireError, type ErrorCode } from '../errors/errors.js';
import { JwtVerifier, PROTOCOL, tokenFrom, type Principal } from './auth.js';
import { Connection, type Delivery } from './Connection.js';
import { buildTextFrame } from './frame.js';
import { ReplayStore } from './ReplayStore.js';

export interface EventHubOptions {
  readonly jwtSecret: string;
  /** WebSocket endpoint path. Default `/v1/events`. */
  readonly path?: string;
  /** Unsent bytes per connection before it is closed with 4408. Default 4 MiB. */
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
  /** Held events (users with no connection) across all users. Default 200000. */
  readonly maxHeldEvents?: number;
  /** A run's replay entry is dropped after this long without events even if it never ended. Default 600000. */
  readonly replayMaxIdleMillis?: number;
  readonly metrics: Metrics;
  readonly ledger: RunLedger;
  /**
   * Fault injection for demos and tests: writes to connections of users for
   * which this returns true fail as if the socket had errored.
   */
  readonly failWritesFor?: (user: string) => boolean;
  readonly now?: () => number;
}

interface Held {
  readonly ev: OutboundEvent;
  readonly frame: Buffer;
  readonly atMs: number;
}

const MAX_BAD_FRAMES = 10;

/**
 * The event hub: authenticated WebSocket connections grouped by user, each
 * event written only to its user's connections (optionally narrowed to one
 * conversation), delivery outcomes reported to the ledger, a resume window,
 * held events for users not connected yet, backpressure and heartbeats.
 */
export class EventHub implements EventSink {
  readonly path: string;
  private readonly wss: WebSocketServer;
  private readonly verifier: JwtVerifier;
  private readonly byUser = new Map<string, Set<Connection>>();
  private readonly all = new Set<Connection>();
  private readonly dirty = new Set<Connection>();
  private flushScheduled = false;
  private readonly held = new Map<string, Held[]>();
  private heldTotal = 0;
  private readonly replay: ReplayStore;
  private nextId = 1;
  private heartbeat: NodeJS.Timeout | undefined;
  private readonly sweeper: NodeJS.Timeout;
  private closing = false;
  private readonly now: () => number;
  private readonly metrics: Metrics;
  private readonly ledger: RunLedger;
  private readonly onDone = (d: Delivery, ok: boolean, reason: DropReason | undefined): void => this.settle(d, ok, reason);

  constructor(private readonly opts: EventHubOptions) {
    this.path = opts.path ?? '/v1/events';
    this.now = opts.now ?? Date.now;
    this.metrics = opts.metrics;
    this.ledger = opts.ledger;
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
      maxTotalBytes: 256 * 1024 * 1024,
      maxIdleMillis: opts.replayMaxIdleMillis ?? 600_000,
      now: this.now,
    });
    if (opts.wsHeartbeatMillis > 0) {
      this.heartbeat = setInterval(() => this.beat(), opts.wsHeartbeatMillis);
      this.heartbeat.unref();
    }
    const sweepEvery = Math.max(50, Math.min(1000, Math.floor(opts.replayRetentionMillis / 4) || 50));
    this.sweeper = setInterval(() => this.sweep(), sweepEvery);
    this.sweeper.unref();
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
      if (!this.handleUpgrade(req, socket, head)) {
        socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      }
    });
  }

  /** Handle an HTTP upgrade; false when the path is not the hub's. */
  handleUpgrade(req: IncomingMessage, socket: Socket, head: Buffer): boolean {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (url.pathname !== this.path) return false;
    socket.on('error', () => socket.destroy());
    if (this.closing) {
      socket.end('HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n');
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
    const conn = new Connection(this.nextId++, p.user, conversation, ws, socket, this.opts.wsMaxBufferedBytes, this.onDone);
    this.all.add(conn);
    let set = this.byUser.get(p.user);
    if (set === undefined) this.byUser.set(p.user, (set = new Set()));
    set.add(conn);
    this.metrics.connectionAttempts.inc({ result: 'accepted' });
    this.metrics.connections.set(this.all.size);

    ws.on('pong', () => {
      conn.alive = true;
    });
    ws.on('message', (data, isBinary) => this.onClientFrame(conn, data as Buffer, isBinary));
    ws.on('close', (code) => this.onClose(conn, code));
    if (p.expiresAtMs !== undefined) {
      const wait = p.expiresAtMs - this.now();
      conn.expiryTimer = setTimeout(() => {
        conn.failQueued('unauthorised');
        this.closeWith(conn, new TracewireError('TW_AUTH_EXPIRED', new Date(p.expiresAtMs!).toISOString()), 'token_expired');
      }, Math.max(0, Math.min(wait, 2 ** 31 - 1)));
      conn.expiryTimer.unref();
    }

    ws.send(JSON.stringify({ type: 'ack', protocol: PROTOCOL, user: p.user, connection_id: conn.id, conversation_id: conversation ?? null }));

    // Resume named in the URL first (?resume=<run_id>:<seq>,...), then events held while the user had no connection.
    const resume = url.searchParams.get('resume');
    if (resume) {
      const runs: Record<string, number> = {};
      for (const part of resume.split(',')) {
        const i = part.lastIndexOf(':');
        const seq = Number(part.slice(i + 1));
        if (i > 0 && Number.isInteger(seq) && seq >= 0) runs[part.slice(0, i)] = seq;
      }
      this.resume(conn, runs);
    }
    this.releaseHeld(conn);
    this.scheduleFlush();
  }

  // ---- sink side ----------------------------------------------------------

  publish(ev: OutboundEvent): void {
    const frame = buildTextFrame(ev.payload);
    this.replay.add(ev, frame);
    const set = this.byUser.get(ev.user);
    let targets = 0;
    if (set !== undefined) for (const c of set) if (!c.closed && c.wants(ev)) targets++;
    if (targets === 0) {
      this.hold(ev, frame);
      return;
    }
    ev.run.sawConnection = true;
    const d: Delivery = { ev, frame, remaining: targets, ok: false, late: false, failReason: undefined };
    for (const c of set!) {
      if (c.closed || !c.wants(ev)) continue;
      ev.record.attempts++;
      if (!c.enqueue(d)) this.backpressure(c);
      else this.dirty.add(c);
    }
    this.scheduleFlush();
  }

  runEnded(runId: string): void {
    this.replay.ended(runId);
  }

  private hold(ev: OutboundEvent, frame: Buffer): void {
    this.ledger.markHeld(ev.record);
    const maxHeld = this.opts.maxHeldEvents ?? 200_000;
    if (this.opts.replayRetentionMillis === 0) {
      this.ledger.markDropped(ev.run, ev.record, 'no_subscriber');
      return;
    }
    let list = this.held.get(ev.user);
    if (list === undefined) this.held.set(ev.user, (list = []));
    list.push({ ev, frame, atMs: this.now() });
    this.heldTotal++;
    while (this.heldTotal > maxHeld) {
      const [user, oldest] = this.held.entries().next().value as [string, Held[]];
      const h = oldest.shift()!;
      if (oldest.length === 0) this.held.delete(user);
      this.heldTotal--;
      this.ledger.markDropped(h.ev.run, h.ev.record, 'no_subscriber');
    }
  }

  /** Deliver events held for this connection's user (those it wants), in order. */
  private releaseHeld(conn: Connection): void {
    const list = this.held.get(conn.user);
    if (list === undefined) return;
    const keep: Held[] = [];
    for (const h of list) {
      if (!conn.wants(h.ev)) {
        keep.push(h);
        continue;
      }
      this.heldTotal--;
      h.ev.run.sawConnection = true;
      const d: Delivery = { ev: h.ev, frame: h.frame, remaining: 1, ok: false, late: true, failReason: undefined };
      h.ev.record.attempts++;
      if (!conn.enqueue(d)) {
        this.backpressure(conn);
        break;
      }
    }
    if (keep.length > 0) this.held.set(conn.user, keep);
    else this.held.delete(conn.user);
    if (conn.dirty) this.dirty.add(conn);
  }

  /** Re-send what a reconnecting client missed: seq > the last seq it names, per run of its user. */
  private resume(conn: Connection, runs: Record<string, number>): void {
    let n = 0;
    for (const [runId, lastSeq] of Object.entries(runs)) {
      const evs = this.replay.since(runId, conn.user, lastSeq);
      if (evs === undefined) {
        this.sendError(conn.ws, new TracewireError('TW_WS_BAD_FIELD', `runs.${runId}`, 'run unknown or outside the resume window'));
        continue;
      }
      const first = evs[0]?.ev.seq;
      if (first !== undefined && first > lastSeq + 1) {
        this.sendError(conn.ws, new TracewireError('TW_WS_BAD_FIELD', `runs.${runId}`, `events ${lastSeq + 1}..${first - 1} are past the resume window`));
      }
      for (const { ev, frame } of evs) {
        // An event still held for this user is delivered by resume: take it out of the hold.
        this.unhold(ev);
        const d: Delivery = { ev, frame, remaining: 1, ok: false, late: true, failReason: undefined };
        if (!conn.enqueue(d)) {
          this.backpressure(conn);
          return;
        }
        n++;
      }
    }
    this.metrics.replayedEvents.inc(n);
    if (conn.dirty) this.dirty.add(conn);
  }

  private unhold(ev: OutboundEvent): void {
    const list = this.held.get(ev.user);
    if (list === undefined) return;
    const i = list.findIndex((h) => h.ev === ev);
    if (i < 0) return;
    list.splice(i, 1);
    this.heldTotal--;
    if (list.length === 0) this.held.delete(ev.user);
  }

  private settle(d: Delivery, ok: boolean, reason: DropReason | undefined): void {
    if (this.opts.failWritesFor !== undefined && ok && this.opts.failWritesFor(d.ev.user)) {
      ok = false;
      reason = 'send_failed';
    }
    d.remaining--;
    if (ok) {
      if (!d.ok) {
        d.ok = true;
        d.ev.record.connections++;
        this.ledger.markDelivered(d.ev.run, d.ev.record, d.late);
        if (d.ev.hookAt !== undefined && !d.late) {
          const seconds = (performance.now() - d.ev.hookAt) / 1000;
          this.metrics.deliverySeconds.observe({ labels: { type: d.ev.type }, value: seconds, exemplarLabels: { trace_id: d.ev.traceId } as Record<string, string> });
        }
      } else d.ev.record.connections++;
      return;
    }
    if (d.failReason === undefined || reason === 'backpressure') d.failReason = reason;
    if (d.remaining <= 0 && !d.ok) {
      if (d.failReason === 'no_subscriber') this.ledger.markDropped(d.ev.run, d.ev.record, 'no_subscriber');
      else this.ledger.markDropped(d.ev.run, d.ev.record, d.failReason ?? 'send_failed');
    }
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(() => this.flush());
  }

  /** Write every dirty connection's batch now. */
  flush(): void {
    this.flushScheduled = false;
    for (const c of this.dirty) c.flush();
    this.dirty.clear();
  }

  private backpressure(conn: Connection): void {
    const buffered = conn.bufferedBytes;
    conn.failQueued('backpressure');
    this.closeWith(conn, new TracewireError('TW_WS_BACKPRESSURE', buffered, this.opts.wsMaxBufferedBytes), 'backpressure');
  }

  private closeWith(conn: Connection, e: TracewireError, reason: string): void {
    if (conn.closed) return;
    this.forget(conn, reason);
    // The client is not reading: a polite close would sit behind the backlog, so end the socket.
    if (reason === 'backpressure') {
      conn.socket.destroy();
      conn.ws.terminate();
      return;
    }
    this.sendError(conn.ws, e);
    conn.ws.close(e.closeCode ?? 1011, e.code);
  }

  private forget(conn: Connection, reason: string): void {
    if (conn.closed) return;
    conn.closed = true;
    if (conn.expiryTimer) clearTimeout(conn.expiryTimer);
    this.all.delete(conn);
    this.dirty.delete(conn);
    const set = this.byUser.get(conn.user);
    if (set !== undefined) {
      set.delete(conn);
      if (set.size === 0) this.byUser.delete(conn.user);
    }
    conn.failQueued('send_failed');
    this.metrics.disconnects.inc({ reason });
    this.metrics.connections.set(this.all.size);
  }

  private onClose(conn: Connection, code: number): void {
    this.forget(conn, code === 1000 || code === 1001 ? 'client_close' : code === 1006 ? 'abnormal' : 'client_close');
  }

  private onClientFrame(conn: Connection, data: Buffer, isBinary: boolean): void {
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
        const runs = m.runs;
        if (runs === null || typeof runs !== 'object' || Array.isArray(runs) || !Object.values(runs).every((v) => Number.isInteger(v) && (v as number) >= 0)) {
          this.badFrame(conn, new TracewireError('TW_WS_BAD_FIELD', 'runs', 'expected an object of run_id -> last seq (integer >= 0)'));
          return;
        }
        this.resume(conn, runs as Record<string, number>);
        this.scheduleFlush();
        return;
      }
      case 'ack': {
        if (typeof m.run_id !== 'string' || !Number.isInteger(m.seq)) {
          this.badFrame(conn, new TracewireError('TW_WS_BAD_FIELD', 'run_id/seq', 'expected {"type":"ack","run_id":string,"seq":integer}'));
          return;
        }
        const rec = this.ledger.get(m.run_id);
        if (rec !== undefined && rec.user === conn.user) {
          for (const ev of rec.events) if (ev.seq <= (m.seq as number)) ev.acked = true;
        }
        return;
      }
      case 'ping':
        conn.ws.send(JSON.stringify({ type: 'pong' }));
        return;
      default:
        this.badFrame(conn, new TracewireError('TW_WS_UNKNOWN_TYPE', String(m.type)));
    }
  }

  private badFrame(conn: Connection, e: TracewireError): void {
    conn.badFrames++;
    this.metrics.clientFrameErrors.inc({ code: e.code as ErrorCode });
    if (conn.badFrames >= MAX_BAD_FRAMES) {
      this.closeWith(conn, new TracewireError('TW_WS_TOO_MANY_BAD_FRAMES', conn.badFrames), 'bad_frames');
      return;
    }
    this.sendError(conn.ws, e);
  }

  private beat(): void {
    for (const c of this.all) {
      if (!c.alive) {
        this.forget(c, 'heartbeat_timeout');
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
    for (const [user, list] of this.held) {
      let i = 0;
      while (i < list.length && list[i]!.atMs <= cutoff) {
        const h = list[i]!;
        this.ledger.markDropped(h.ev.run, h.ev.record, 'no_subscriber');
        i++;
      }
      if (i > 0) {
        list.splice(0, i);
        this.heldTotal -= i;
        if (list.length === 0) this.held.delete(user);
      }
    }
  }

  /**
   * Graceful shutdown: refuse new connections, flush pending writes, close
   * every connection with 1001 (going away; clients resume), and resolve when
   * they are closed or `timeoutMillis` passed (then terminate).
   */
  async close(timeoutMillis = 5000): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.flush();
    if (this.heartbeat) clearInterval(this.heartbeat);
    clearInterval(this.sweeper);
    const conns = [...this.all];
    const closed = conns.map((c) => new Promise<void>((resolve) => {
      if (c.ws.readyState === c.ws.CLOSED) return resolve();
      c.ws.once('close', () => resolve());
    }));
    for (const c of conns) {
      this.sendError(c.ws, new TracewireError('TW_WS_SHUTDOWN'));
      c.ws.close(1001, 'TW_WS_SHUTDOWN');
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
      if (!c.closed) this.forget(c, 'shutdown');
      c.ws.terminate();
    }
    for (const list of this.held.values()) for (const h of list) this.ledger.markDropped(h.ev.run, h.ev.record, 'shutdown');
    this.held.clear();
    this.heldTotal = 0;
    this.wss.close();
  }

  /** Introspection for tests and the inspector. */
  stats(): { connections: number; users: number; held: number; replayRuns: number; replayBytes: number } {
    return { connections: this.all.size, users: this.byUser.size, held: this.heldTotal, replayRuns: this.replay.size, replayBytes: this.replay.bytes };
  }
}
