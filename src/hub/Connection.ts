import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import type { DropReason } from '../audit/Metrics.js';
import type { OutboundEvent } from '../bridge/EventSink.js';
import { copyFrame } from './frame.js';

/** Named runs a connection remembers before it lets go of those that left the resume window. */
export const RESUMED_PRUNE_FROM = 256;

/** One event written to one or more connections; settled once every write finished. */
export interface Delivery {
  readonly ev: OutboundEvent;
  remaining: number;
  ok: boolean;
  late: boolean;
  failReason: DropReason | undefined;
}

export type DeliveryDone = (d: Delivery, ok: boolean, reason: DropReason | undefined) => void;

/**
 * Bytes handed to the socket per write, and the socket buffer level below
 * which the connection keeps writing. The rest of the backlog stays in the
 * connection's own queue, where it can still be given up (backpressure) and
 * where a close frame does not have to wait behind megabytes of events.
 */
export const WRITE_CHUNK_BYTES = 64 * 1024;

/**
 * Runs per connection whose written seqs are remembered (resume without
 * duplicates). Entries of runs that left the resume window are pruned as new
 * runs arrive; this cap only bounds a user with that many resumable runs.
 */
const MAX_TRACKED_RUNS = 256;
const PRUNE_FROM = 16;

/**
 * The seqs of one run written to one connection, as sorted disjoint ranges
 * `[lo0, hi0, lo1, hi1, ...]`. Almost always a single range.
 */
class SeqRanges {
  private r: number[] = [];

  has(seq: number): boolean {
    const r = this.r;
    for (let i = 0; i < r.length; i += 2) {
      if (seq < r[i]!) return false;
      if (seq <= r[i + 1]!) return true;
    }
    return false;
  }

  add(seq: number): void {
    const r = this.r;
    const n = r.length;
    if (n === 0) {
      r.push(seq, seq);
      return;
    }
    if (seq === r[n - 1]! + 1) {
      r[n - 1] = seq;
      return;
    }
    if (seq > r[n - 1]! + 1) {
      r.push(seq, seq);
      return;
    }
    // Out of order (resume filling a gap): insert and merge.
    let i = 0;
    while (i < r.length && r[i + 1]! < seq - 1) i += 2;
    if (i >= r.length) {
      r.push(seq, seq);
      return;
    }
    if (seq >= r[i]! && seq <= r[i + 1]!) return;
    if (seq === r[i]! - 1) r[i] = seq;
    else if (seq === r[i + 1]! + 1) r[i + 1] = seq;
    else {
      r.splice(i, 0, seq, seq);
      return;
    }
    // Merge with the next range when they touch.
    if (i + 2 < r.length && r[i + 1]! + 1 >= r[i + 2]!) {
      r[i + 1] = Math.max(r[i + 1]!, r[i + 3]!);
      r.splice(i + 2, 2);
    }
  }
}

/**
 * One authenticated WebSocket connection of a user.
 *
 * Events are queued here and written straight to the raw socket as frames
 * (an event's cached frame, or its JSON framed straight into the batch),
 * batched into one write of up to WRITE_CHUNK_BYTES at a time; the
 * write callback is the delivery proof (the bytes reached the kernel). While
 * the socket's own buffer is at or over WRITE_CHUNK_BYTES (the client is not
 * reading fast enough) the connection waits for `drain` and the rest stays in
 * this queue, where it can still be given up. The limit (`maxBufferedBytes`)
 * covers the queue, the socket's buffer and live events waiting behind a
 * catch-up. `ws` keeps handling pings, pongs, client frames and the close
 * handshake on the same socket, frame by frame; raw frames are never written
 * once the connection is not OPEN (a close frame was sent or received).
 */
export class Connection {
  /** Ready to write; counted against the buffer limit. */
  private out: Delivery[] = [];
  private head = 0;
  private outBytes = 0;
  /**
   * Waiting behind a catch-up (resume or held events), in order. Catch-up
   * events are ones the replay store or the hold already keep (nothing is
   * copied for them), and are moved into `out` only as the client reads, so a large resume is
   * streamed at the client's pace instead of tripping the buffer limit. Live
   * events that arrive meanwhile wait here too (per-run order) and their
   * bytes do count against the limit.
   */
  private backlog: Delivery[] = [];
  private backlogHead = 0;
  private backlogLiveBytes = 0;
  /**
   * Catch-ups still being fetched (a resume asked of other sidecars): while
   * any is, everything waits in the backlog, so the fetched events can go
   * out first (`enqueueFirst`).
   */
  private gates = 0;
  /** Forgotten by the hub: nothing more is queued or written. */
  closed = false;
  /** The reason given to events whose write fails or is given up (set by the hub when it closes the connection). */
  closeReason: DropReason = 'send_failed';
  alive = true;
  badFrames = 0;
  /**
   * Runs a resume on this connection named that the hub still had: a later
   * `all` does not send them from their start. Bounded: see EventHub.noteResumed.
   */
  resumedRuns: Set<string> | undefined = undefined;
  resumedPruneAt = RESUMED_PRUNE_FROM;
  /** Several sidecars: a resume is being asked of the others (one at a time per connection). */
  asking = false;
  /** What further resumes asked meanwhile: asked next, as one. */
  askNext: { runs: Record<string, number>; all: boolean; named: Set<string> } | undefined = undefined;
  /** `all` was asked of the others once already on this connection. */
  askedAll = false;
  expiryTimer: NodeJS.Timeout | undefined;
  closeTimer: NodeJS.Timeout | undefined;
  /** Seqs written per run (LRU, bounded): resume never re-sends what this connection already got. */
  private readonly sent = new Map<string, SeqRanges>();
  private lastRun: string | undefined;
  private lastRanges: SeqRanges | undefined;
  private pruneAt = PRUNE_FROM;
  private waitingDrain = false;

  constructor(
    readonly id: number,
    readonly user: string,
    readonly conversation: string | undefined,
    readonly ws: WebSocket,
    readonly socket: Socket,
    private readonly maxBufferedBytes: number,
    private readonly done: DeliveryDone,
    /** Is this run still resumable (in the replay store)? Tracking of other runs is dropped. */
    private readonly retained: (runId: string) => boolean = () => true,
  ) {
    socket.on('drain', () => {
      if (!this.waitingDrain) return;
      this.waitingDrain = false;
      this.flush();
    });
  }

  /** Bytes counted against the limit: queued here, live ones behind a catch-up, and not yet handed to the kernel. */
  get bufferedBytes(): number {
    return this.outBytes + this.backlogLiveBytes + this.socket.writableLength;
  }

  /** Would `bytes` more (a control frame written outside the queue) keep the connection within its limit? */
  fits(bytes: number): boolean {
    return this.bufferedBytes + bytes <= this.maxBufferedBytes;
  }

  get queuedCount(): number {
    return this.out.length - this.head + this.backlog.length - this.backlogHead;
  }

  /** Open, not closing, and not narrowed away from this event's conversation. */
  accepts(ev: OutboundEvent): boolean {
    return !this.closed && this.ws.readyState === 1 && this.wants(ev);
  }

  wants(ev: OutboundEvent): boolean {
    return this.conversation === undefined || this.conversation === ev.conversation;
  }

  /** Was this seq of this run already queued or written on this connection? */
  has(runId: string, seq: number): boolean {
    const r = runId === this.lastRun ? this.lastRanges : this.sent.get(runId);
    return r !== undefined && r.has(seq);
  }

  private mark(runId: string, seq: number): void {
    let r: SeqRanges | undefined;
    if (runId === this.lastRun) r = this.lastRanges;
    else {
      r = this.sent.get(runId);
      if (r === undefined) {
        r = new SeqRanges();
        if (this.sent.size >= this.pruneAt) {
          for (const id of this.sent.keys()) if (!this.retained(id)) this.sent.delete(id);
          this.pruneAt = Math.max(PRUNE_FROM, this.sent.size * 2);
        }
        if (this.sent.size >= MAX_TRACKED_RUNS) this.sent.delete(this.sent.keys().next().value as string);
      } else this.sent.delete(runId);
      this.sent.set(runId, r); // most recently used last
      this.lastRun = runId;
      this.lastRanges = r;
    }
    r!.add(seq);
  }

  /**
   * Queue a delivery: a live one (`d.late` false), or a catch-up one
   * (resume, held events) that is streamed as the client reads. False when a
   * live delivery takes the connection over its buffer limit: it is queued
   * anyway and the caller closes the connection (which fails everything
   * queued with `backpressure`).
   */
  enqueue(d: Delivery): boolean {
    const ev = d.ev;
    if (this.closed || this.ws.readyState !== 1) {
      this.done(d, false, this.closeReason);
      return true;
    }
    if (this.has(ev.runId, ev.seq)) {
      // Already queued or written here (an overlap of resume and held events): the client has it once.
      this.done(d, true, undefined);
      return true;
    }
    this.mark(ev.runId, ev.seq);
    if (d.late || this.gates > 0 || this.backlogHead < this.backlog.length) {
      this.backlog.push(d);
      if (d.late) return true;
      this.backlogLiveBytes += ev.bytes;
    } else {
      this.out.push(d);
      this.outBytes += ev.bytes;
    }
    return this.bufferedBytes <= this.maxBufferedBytes;
  }

  /** A catch-up is being fetched: hold everything back until `openGate`. */
  closeGate(): void {
    this.gates++;
  }

  /** A fetched catch-up was queued (or given up): what waited goes out. */
  openGate(): void {
    if (this.gates > 0) this.gates--;
  }

  /**
   * Queue catch-up deliveries ahead of everything still waiting (events of
   * a resume fetched from other sidecars: older than any live event of their
   * run queued meanwhile). Ones this connection already has are done at once.
   * Returns how many were queued.
   */
  enqueueFirst(ds: readonly Delivery[]): number {
    if (this.closed || this.ws.readyState !== 1) {
      for (const d of ds) this.done(d, false, this.closeReason);
      return 0;
    }
    const fresh: Delivery[] = [];
    for (const d of ds) {
      if (this.has(d.ev.runId, d.ev.seq)) this.done(d, true, undefined);
      else {
        this.mark(d.ev.runId, d.ev.seq);
        fresh.push(d);
      }
    }
    if (fresh.length === 0) return 0;
    this.backlog = fresh.concat(this.backlog.slice(this.backlogHead));
    this.backlogHead = 0;
    return fresh.length;
  }

  get dirty(): boolean {
    return this.out.length > this.head || this.backlog.length > this.backlogHead;
  }

  /** Move catch-up deliveries into `out` while it is empty or the connection is under half its limit (or all of them). */
  private pump(all: boolean): void {
    if (this.gates > 0 && !all) return;
    const backlog = this.backlog;
    const refill = this.maxBufferedBytes / 2;
    while (this.backlogHead < backlog.length && (all || this.head >= this.out.length || this.outBytes + this.socket.writableLength < refill)) {
      const d = backlog[this.backlogHead]!;
      backlog[this.backlogHead++] = undefined as unknown as Delivery;
      if (!d.late) this.backlogLiveBytes -= d.ev.bytes;
      this.out.push(d);
      this.outBytes += d.ev.bytes;
    }
    if (this.backlogHead === backlog.length) {
      if (backlog.length > 0) {
        this.backlog = [];
        this.backlogHead = 0;
      }
    } else if (this.backlogHead > 1024 && this.backlogHead * 2 > backlog.length) {
      this.backlog = backlog.slice(this.backlogHead);
      this.backlogHead = 0;
    }
  }

  /**
   * Write what is queued, in chunks, while the socket keeps up; the rest
   * waits for `drain`. `all` writes everything regardless (shutdown: the
   * backlog is bounded by the buffer limit and goes out before the close frame).
   */
  flush(all = false): void {
    if (this.closed) return; // forget() already gave up the queue
    if (this.ws.readyState !== 1) {
      // A close frame was sent or received: no data frame may follow it.
      this.failQueued(this.closeReason);
      return;
    }
    for (;;) {
      this.pump(all);
      const out = this.out;
      if (this.head >= out.length) break;
      if (!all && this.socket.writableLength >= WRITE_CHUNK_BYTES) {
        // The client is behind: continue on drain (the socket buffer is over its high-water mark, so drain comes).
        this.waitingDrain = true;
        break;
      }
      const start = this.head;
      let end = start;
      let bytes = 0;
      while (end < out.length && (end === start || all || bytes + out[end]!.ev.bytes <= WRITE_CHUNK_BYTES)) {
        bytes += out[end]!.ev.bytes;
        end++;
      }
      this.head = end;
      this.outBytes -= bytes;
      this.write(start === end - 1 ? [out[start]!] : out.slice(start, end), bytes);
      if (this.head === out.length) {
        this.out = [];
        this.head = 0;
      } else if (this.head > 1024 && this.head * 2 > out.length) {
        this.out = out.slice(this.head);
        this.head = 0;
      }
      if (this.socket.destroyed) break;
    }
  }

  private write(batch: Delivery[], bytes: number): void {
    const cb = (err?: Error | null): void => {
      const ok = err === undefined || err === null;
      const reason = ok ? undefined : this.closeReason;
      for (const d of batch) this.done(d, ok, reason);
    };
    try {
      // One buffer per write. An event's own frame is only cached when several connections share it
      // (frameOf in the hub): the resume window then keeps one JSON string per event, not a Buffer.
      const first = batch[0]!.ev;
      if (batch.length === 1 && first.frame !== undefined) this.socket.write(first.frame, cb);
      else {
        const buf = Buffer.allocUnsafe(bytes);
        let at = 0;
        for (const d of batch) at += copyFrame(d.ev, buf, at);
        this.socket.write(buf, cb);
      }
    } catch (err) {
      cb(err as Error);
    }
  }

  /** Give up everything still queued (close, backpressure, shutdown). */
  failQueued(reason: DropReason): void {
    const out = this.out;
    const head = this.head;
    const backlog = this.backlog;
    const backlogHead = this.backlogHead;
    this.out = [];
    this.head = 0;
    this.outBytes = 0;
    this.backlog = [];
    this.backlogHead = 0;
    this.backlogLiveBytes = 0;
    for (let i = head; i < out.length; i++) this.done(out[i]!, false, reason);
    for (let i = backlogHead; i < backlog.length; i++) this.done(backlog[i]!, false, reason);
  }
}
