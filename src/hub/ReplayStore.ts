import { EvictionOrder } from '../util/EvictionOrder.js';
import { Fifo } from '../util/Fifo.js';
import type { OutboundEvent } from '../bridge/EventSink.js';
import type { ReplayTrimBound } from '../audit/Metrics.js';
import { append } from '../util/arrays.js';

export interface ReplayEntry {
  readonly runId: string;
  readonly user: string;
  /** Retained events of the run from index `head`, ascending seq. */
  events: OutboundEvent[];
  head: number;
  /** Frame bytes retained. */
  bytes: number;
  endedAtMs: number | undefined;
  lastAddMs: number;
}

export interface ReplayStoreOptions {
  /** How long after a run ends its events stay resumable. Default 60000. */
  readonly retentionMillis: number;
  /** Events kept per run (oldest dropped first). Default 1000. */
  readonly maxEventsPerRun: number;
  /** Frame bytes kept per run (oldest dropped first). Default 1 MiB. */
  readonly maxBytesPerRun: number;
  /** Bytes across all runs, frames plus a fixed per-event overhead; the oldest runs are dropped past it. Default 256 MiB. */
  readonly maxTotalBytes: number;
  /** A run with no new event for this long is dropped even if it never ended. */
  readonly maxIdleMillis: number;
  readonly now: () => number;
  /** Told of events given up to a bound before their run expired (not of expiry itself). */
  readonly onTrim?: (bound: ReplayTrimBound, events: number) => void;
}

/** Accounting estimate of what one retained event costs besides its frame (objects, array slot). */
export const EVENT_OVERHEAD_BYTES = 160;

/**
 * The resume window: each run's recent frames, bounded per run (events and
 * bytes), in total (bytes), by age after the run ends and by idle time, so a
 * reconnecting client can catch up on what it missed.
 */
export class ReplayStore {
  private readonly runs = new Map<string, ReplayEntry>();
  /** The retained runs, oldest first (what maxTotalBytes drops first). */
  private readonly order = new EvictionOrder<ReplayEntry>((x) => this.runs.get(x.runId) === x);
  /** The retained runs of each user, oldest first (resume of every run of a user). */
  private readonly byUser = new Map<string, Set<ReplayEntry>>();
  private totalBytes = 0;
  /** Ended runs in the order they ended (expiry order); entries dropped meanwhile are skipped. */
  private readonly endedQ = new Fifo<ReplayEntry>();
  private nextIdlePass = 0;
  /** Events given up to the bounds before their run expired (no longer resumable). */
  trimmed = 0;

  constructor(private readonly opts: ReplayStoreOptions) {}

  get size(): number {
    return this.runs.size;
  }
  /** Accounted bytes (frames plus per-event overhead). */
  get bytes(): number {
    return this.totalBytes;
  }

  get enabled(): boolean {
    return this.opts.maxEventsPerRun > 0 && this.opts.retentionMillis > 0;
  }

  add(ev: OutboundEvent): void {
    if (!this.enabled) return;
    let e = this.runs.get(ev.runId);
    const now = this.opts.now();
    if (e === undefined) {
      e = { runId: ev.runId, user: ev.user, events: [], head: 0, bytes: 0, endedAtMs: undefined, lastAddMs: now };
      this.runs.set(ev.runId, e);
      this.order.push(e);
      let set = this.byUser.get(ev.user);
      if (set === undefined) this.byUser.set(ev.user, (set = new Set()));
      set.add(e);
    }
    e.lastAddMs = now;
    // A run that ended before its first event entered the window (held events released late) expires from now.
    if (e.endedAtMs === undefined && ev.run.endMs !== undefined) this.markEnded(e, now);
    const evs = e.events;
    if (evs.length === e.head || evs[evs.length - 1]!.seq < ev.seq) e.events = append(evs, ev);
    else {
      // Out of seq order (a held event released after a later one went out live): keep the window sorted.
      let i = evs.length;
      while (i > e.head && evs[i - 1]!.seq > ev.seq) i--;
      if (i > e.head && evs[i - 1]!.seq === ev.seq) return; // already retained
      evs.splice(i, 0, ev);
    }
    e.bytes += ev.bytes;
    this.totalBytes += ev.bytes + EVENT_OVERHEAD_BYTES;
    let overCount = 0;
    let overBytes = 0;
    while (e.events.length - e.head > 1 && (e.events.length - e.head > this.opts.maxEventsPerRun || e.bytes > this.opts.maxBytesPerRun)) {
      if (e.events.length - e.head > this.opts.maxEventsPerRun) overCount++;
      else overBytes++;
      const old = e.events[e.head]!;
      e.events[e.head] = undefined as unknown as OutboundEvent;
      e.head++;
      e.bytes -= old.bytes;
      this.totalBytes -= old.bytes + EVENT_OVERHEAD_BYTES;
    }
    if (overCount > 0) this.trim('run_events', overCount);
    if (overBytes > 0) this.trim('run_bytes', overBytes);
    if (e.head > 64 && e.head * 2 > e.events.length) {
      e.events = e.events.slice(e.head);
      e.head = 0;
    }
    if (this.totalBytes > this.opts.maxTotalBytes) this.trimTotal(e);
  }

  /**
   * Past maxTotalBytes: drop the oldest runs, but not `keep` (the run just
   * added to): if it is the oldest, it is in use, so it moves behind the others.
   */
  private trimTotal(keep: ReplayEntry): void {
    const max = this.opts.maxTotalBytes;
    while (this.totalBytes > max) {
      const old = this.order.oldest();
      if (old === undefined || (old === keep && this.runs.size === 1)) return;
      if (old === keep) {
        this.order.requeueOldest();
        continue;
      }
      this.trim('total_bytes', old.events.length - old.head);
      this.drop(old.runId, old);
    }
  }

  private trim(bound: ReplayTrimBound, events: number): void {
    this.trimmed += events;
    this.opts.onTrim?.(bound, events);
  }

  ended(runId: string): void {
    const e = this.runs.get(runId);
    if (e !== undefined && e.endedAtMs === undefined) this.markEnded(e, this.opts.now());
  }

  private markEnded(e: ReplayEntry, now: number): void {
    e.endedAtMs = now;
    this.endedQ.push(e);
  }

  /** Is the run retained (resumable)? */
  contains(runId: string): boolean {
    return this.runs.has(runId);
  }

  /** Is the run retained for `user`? */
  has(runId: string, user: string): boolean {
    const e = this.runs.get(runId);
    return e !== undefined && e.user === user;
  }

  /**
   * Retained events of `runId` with seq > `afterSeq`, ascending, only if the
   * run belongs to `user` (otherwise undefined, as for an unknown run).
   */
  since(runId: string, user: string, afterSeq: number): OutboundEvent[] | undefined {
    const e = this.runs.get(runId);
    if (e === undefined || e.user !== user) return undefined;
    const evs = e.events;
    let lo = e.head;
    let hi = evs.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (evs[mid]!.seq <= afterSeq) lo = mid + 1;
      else hi = mid;
    }
    return evs.slice(lo);
  }

  /** The last retained seq of `runId` if it belongs to `user` (undefined: unknown, or another user's, or none left). */
  lastSeq(runId: string, user: string): number | undefined {
    const e = this.runs.get(runId);
    if (e === undefined || e.user !== user || e.events.length <= e.head) return undefined;
    return e.events[e.events.length - 1]!.seq;
  }

  /** Ids of the runs retained for `user`, oldest first. */
  runIdsOf(user: string): string[] {
    const set = this.byUser.get(user);
    return set === undefined ? [] : [...set].map((e) => e.runId);
  }

  /**
   * Drop what expired. Ended runs expire in the order they ended (a queue:
   * the cost is what expires, not what is retained); runs that never ended
   * are checked for idleness by a full pass only every quarter of the idle
   * time (at least every second), so that bound is met within 25%.
   */
  sweep(): void {
    const now = this.opts.now();
    for (let e = this.endedQ.peek(); e !== undefined && e.endedAtMs! + this.opts.retentionMillis <= now; e = this.endedQ.peek()) {
      this.endedQ.shift();
      if (this.runs.get(e.runId) === e) this.drop(e.runId, e);
    }
    if (now < this.nextIdlePass) return;
    this.nextIdlePass = now + Math.max(1000, this.opts.maxIdleMillis / 4);
    for (const [id, e] of this.runs) if (e.lastAddMs + this.opts.maxIdleMillis <= now) this.drop(id, e);
  }

  clear(): void {
    this.runs.clear();
    this.order.clear();
    this.endedQ.clear();
    this.byUser.clear();
    this.totalBytes = 0;
  }

  private drop(id: string, e: ReplayEntry): void {
    this.runs.delete(id);
    this.order.left();
    const set = this.byUser.get(e.user);
    if (set !== undefined) {
      set.delete(e);
      if (set.size === 0) this.byUser.delete(e.user);
    }
    this.totalBytes -= e.bytes + (e.events.length - e.head) * EVENT_OVERHEAD_BYTES;
    // The expiry queue may still point at the entry: it must not keep the events alive.
    e.events = [];
    e.head = 0;
    e.bytes = 0;
  }
}
