import type { OutboundEvent } from '../bridge/EventSink.js';

export interface ReplayEntry {
  readonly runId: string;
  readonly user: string;
  /** Retained events of the run, ascending seq, contiguous from `events[0].seq`. */
  readonly events: Array<{ ev: OutboundEvent; frame: Buffer }>;
  bytes: number;
  endedAtMs: number | undefined;
  lastAddMs: number;
}

export interface ReplayStoreOptions {
  /** How long after a run ends its events stay resumable. Default 60000. */
  readonly retentionMillis: number;
  /** Events kept per run (oldest dropped first). Default 1000. */
  readonly maxEventsPerRun: number;
  /** Bytes kept per run (oldest dropped first). Default 1 MiB. */
  readonly maxBytesPerRun: number;
  /** Bytes across all runs; the oldest runs are dropped past it. Default 256 MiB. */
  readonly maxTotalBytes: number;
  /** A run with no new event for this long is dropped even if it never ended. */
  readonly maxIdleMillis: number;
  readonly now: () => number;
}

/**
 * The resume window: each run's recent frames, bounded per run, in total and
 * by age after the run ends, so a reconnecting client can catch up.
 */
export class ReplayStore {
  private readonly runs = new Map<string, ReplayEntry>();
  private totalBytes = 0;
  /** Frames given up to the bounds (no longer resumable). */
  trimmed = 0;

  constructor(private readonly opts: ReplayStoreOptions) {}

  get size(): number {
    return this.runs.size;
  }
  get bytes(): number {
    return this.totalBytes;
  }

  add(ev: OutboundEvent, frame: Buffer): void {
    if (this.opts.maxEventsPerRun === 0 || this.opts.retentionMillis === 0) return;
    let e = this.runs.get(ev.runId);
    const now = this.opts.now();
    if (e === undefined) {
      e = { runId: ev.runId, user: ev.user, events: [], bytes: 0, endedAtMs: undefined, lastAddMs: now };
      this.runs.set(ev.runId, e);
    }
    e.lastAddMs = now;
    e.events.push({ ev, frame });
    e.bytes += frame.length;
    this.totalBytes += frame.length;
    while (e.events.length > 1 && (e.events.length > this.opts.maxEventsPerRun || e.bytes > this.opts.maxBytesPerRun)) {
      const old = e.events.shift()!;
      e.bytes -= old.frame.length;
      this.totalBytes -= old.frame.length;
      this.trimmed++;
    }
    while (this.totalBytes > this.opts.maxTotalBytes && this.runs.size > 1) {
      const [id, oldest] = this.runs.entries().next().value as [string, ReplayEntry];
      this.drop(id, oldest);
    }
  }

  ended(runId: string): void {
    const e = this.runs.get(runId);
    if (e !== undefined) e.endedAtMs = this.opts.now();
  }

  /** Retained events of `runId` with seq > `afterSeq`, only if the run belongs to `user`. */
  since(runId: string, user: string, afterSeq: number): Array<{ ev: OutboundEvent; frame: Buffer }> | undefined {
    const e = this.runs.get(runId);
    if (e === undefined || e.user !== user) return undefined;
    const first = e.events[0]?.ev.seq ?? 1;
    const from = Math.max(0, afterSeq + 1 - first);
    return e.events.slice(from);
  }

  /** The lowest seq still retained for a run (a resume below it has a gap). */
  firstSeq(runId: string): number | undefined {
    return this.runs.get(runId)?.events[0]?.ev.seq;
  }

  sweep(): void {
    const now = this.opts.now();
    for (const [id, e] of this.runs) {
      if ((e.endedAtMs !== undefined && e.endedAtMs + this.opts.retentionMillis <= now) || e.lastAddMs + this.opts.maxIdleMillis <= now) {
        this.drop(id, e);
      }
    }
  }

  private drop(id: string, e: ReplayEntry): void {
    this.runs.delete(id);
    this.totalBytes -= e.bytes;
  }
}
