import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import type { DropReason } from '../audit/Metrics.js';
import type { OutboundEvent } from '../bridge/EventSink.js';

/** One event written to one or more connections; resolved once every write finished. */
export interface Delivery {
  readonly ev: OutboundEvent;
  readonly frame: Buffer;
  remaining: number;
  ok: boolean;
  late: boolean;
  failReason: DropReason | undefined;
}

export type DeliveryDone = (d: Delivery, ok: boolean, reason: DropReason | undefined) => void;

/**
 * One authenticated WebSocket connection of a user. Frames are queued and
 * written in one corked batch per tick straight to the socket (prebuilt
 * frames, shared by all recipients); the write callback is the delivery
 * proof. `ws` keeps handling pings, pongs, client frames and the close
 * handshake on the same socket, frame by frame.
 */
export class Connection {
  private out: Delivery[] = [];
  private outBytes = 0;
  closed = false;
  alive = true;
  badFrames = 0;
  /** Highest seq written to this connection per run (no duplicates on resume). */
  readonly sentSeq = new Map<string, number>();
  expiryTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly id: number,
    readonly user: string,
    readonly conversation: string | undefined,
    readonly ws: WebSocket,
    readonly socket: Socket,
    private readonly maxBufferedBytes: number,
    private readonly done: DeliveryDone,
  ) {}

  /** Bytes queued here plus bytes the socket has not flushed to the kernel. */
  get bufferedBytes(): number {
    return this.outBytes + this.socket.writableLength;
  }

  wants(ev: OutboundEvent): boolean {
    return this.conversation === undefined || this.conversation === ev.conversation;
  }

  /** Queue a delivery; false when the connection is over its buffer limit (caller closes it). */
  enqueue(d: Delivery): boolean {
    if (this.closed) {
      this.done(d, false, 'send_failed');
      return true;
    }
    const seen = this.sentSeq.get(d.ev.runId);
    if (seen !== undefined && seen >= d.ev.seq) {
      // Already written to this connection (resume overlap): it has it.
      this.done(d, true, undefined);
      return true;
    }
    if (this.outBytes + this.socket.writableLength + d.frame.length > this.maxBufferedBytes) {
      this.out.push(d);
      this.outBytes += d.frame.length;
      return false;
    }
    this.sentSeq.set(d.ev.runId, d.ev.seq);
    if (this.sentSeq.size > 4096) this.sentSeq.delete(this.sentSeq.keys().next().value as string);
    this.out.push(d);
    this.outBytes += d.frame.length;
    return true;
  }

  get dirty(): boolean {
    return this.out.length > 0;
  }

  /** Write everything queued in one syscall-friendly batch. */
  flush(): void {
    const batch = this.out;
    if (batch.length === 0 || this.closed) return;
    this.out = [];
    this.outBytes = 0;
    const cb = (err?: Error | null): void => {
      const ok = err === undefined || err === null;
      for (const d of batch) this.done(d, ok, ok ? undefined : 'send_failed');
    };
    try {
      if (batch.length === 1) {
        this.socket.write(batch[0]!.frame, cb);
      } else {
        const bufs = new Array<Buffer>(batch.length);
        let total = 0;
        for (let i = 0; i < batch.length; i++) {
          bufs[i] = batch[i]!.frame;
          total += bufs[i]!.length;
        }
        this.socket.write(Buffer.concat(bufs, total), cb);
      }
    } catch (err) {
      cb(err as Error);
    }
  }

  /** Fail everything still queued (close, backpressure, shutdown). */
  failQueued(reason: DropReason): void {
    const batch = this.out;
    this.out = [];
    this.outBytes = 0;
    for (const d of batch) this.done(d, false, reason);
  }
}
