import { createClient } from '@redis/client';

/**
 * The pub/sub broker sidecars fan events out through (DESIGN.md "Scale"): an
 * existing one, not a home-made one. Fire and forget, as Redis and NATS core
 * pub/sub are: a message published while a subscriber is away is lost, and
 * the fan-out counts what it sent without an answer (`broker_unconfirmed`).
 */
export interface Broker {
  /** Publish one message; rejects when the broker cannot take it now (not connected, connection lost). */
  publish(channel: string, message: string): Promise<unknown>;
  /** Receive every message published on `channel` from now on (re-subscribed after a reconnect). */
  subscribe(channel: string, onMessage: (message: string) => void): Promise<void>;
  /** True while both the publishing and the subscribed connection are up. */
  readonly up: boolean;
  /** Told when `up` changes (after a reconnect: resubscribed and ready). */
  onStatus(listener: (up: boolean) => void): void;
  /**
   * Give up the connections and open new ones (what was subscribed is
   * subscribed again): for a connection that looks up but carries nothing,
   * e.g. half-open after the broker's host vanished without a FIN. `up` is
   * false until the new ones are ready.
   */
  reopen(): void;
  /** Close the connections; pending publishes reject. */
  close(): Promise<void>;
}

export interface RedisBrokerOptions {
  /** `redis://[user:password@]host:port[/db]`, `rediss://…` (TLS), or `unix:///path/to/redis.sock`. */
  readonly url: string;
  /** Told of connection errors (each reconnect attempt fails with one); never throws into the broker. */
  readonly onError?: (err: Error) => void;
  /** Longest wait between reconnect attempts (ms). Default 5000. */
  readonly maxReconnectDelayMillis?: number;
}

type Client = ReturnType<typeof createClient>;

/** The client options for a broker URL: `unix:///path` becomes a socket path (node-redis takes only TCP URLs). */
function clientOptions(url: string, maxDelay: number): Parameters<typeof createClient>[0] {
  // Retry forever, backing off to maxDelay with jitter: the fan-out degrades to local delivery meanwhile.
  const reconnectStrategy = (retries: number): number => Math.min(maxDelay, 50 * 2 ** Math.min(retries, 10)) * (0.5 + Math.random() / 2);
  if (url.startsWith('unix://')) return { socket: { path: decodeURIComponent(new URL(url).pathname), reconnectStrategy }, disableOfflineQueue: true };
  return { url, socket: { reconnectStrategy, connectTimeout: 5000 }, disableOfflineQueue: true };
}

/**
 * A Broker on Redis pub/sub (`@redis/client`): one connection publishes, a
 * second one subscribes (a subscribed Redis connection takes no other
 * command). Both reconnect on their own; no offline queue, so a publish while
 * disconnected fails at once rather than piling up in memory.
 */
export class RedisBroker implements Broker {
  private pub: Client;
  private sub: Client;
  /** What was subscribed, to subscribe again on new connections (`reopen`). */
  private readonly subscriptions: Array<{ channel: string; onMessage: (message: string) => void }> = [];
  /** New connections are coming up (`reopen`): not up until they are and the subscriptions are back. */
  private reopening = false;
  private readonly listeners: Array<(up: boolean) => void> = [];
  private wasUp = false;
  private closed = false;

  constructor(private readonly opts: RedisBrokerOptions) {
    [this.pub, this.sub] = this.clients();
  }

  /** A publishing and a subscribing connection, not yet connecting. */
  private clients(): [Client, Client] {
    const o = clientOptions(this.opts.url, this.opts.maxReconnectDelayMillis ?? 5000);
    const pair: [Client, Client] = [createClient(o), createClient(o)];
    for (const c of pair) {
      c.on('error', (err: Error) => this.opts.onError?.(err));
      c.on('ready', () => this.changed());
      c.on('end', () => this.changed());
      c.on('reconnecting', () => this.changed());
    }
    return pair;
  }

  /** Start connecting (resolves when both connections are up; keeps retrying in the background if not). */
  async connect(): Promise<void> {
    await Promise.all([this.pub.connect(), this.sub.connect()]);
  }

  get up(): boolean {
    return !this.closed && !this.reopening && this.pub.isReady && this.sub.isReady;
  }

  onStatus(listener: (up: boolean) => void): void {
    this.listeners.push(listener);
  }

  private changed(): void {
    // A connection's state moves after its event handlers run; read it on the next tick.
    queueMicrotask(() => {
      const up = this.up;
      if (up === this.wasUp) return;
      this.wasUp = up;
      for (const l of this.listeners) {
        try {
          l(up);
        } catch (err) {
          this.opts.onError?.(err as Error);
        }
      }
    });
  }

  publish(channel: string, message: string): Promise<unknown> {
    if (!this.up) return Promise.reject(new Error('broker not connected'));
    return this.pub.publish(channel, message);
  }

  async subscribe(channel: string, onMessage: (message: string) => void): Promise<void> {
    this.subscriptions.push({ channel, onMessage });
    await this.sub.subscribe(channel, (message: string) => onMessage(message));
  }

  reopen(): void {
    if (this.closed || this.reopening) return;
    this.reopening = true;
    const old = [this.pub, this.sub];
    [this.pub, this.sub] = this.clients();
    // Commands waiting on the old connections (publishes) fail now, and their items count as not sent.
    for (const c of old) {
      c.removeAllListeners();
      c.on('error', () => undefined);
      if (c.isOpen) c.destroy();
    }
    this.changed();
    const sub = this.sub;
    void this.connect()
      .then(async () => {
        for (const s of this.subscriptions) await sub.subscribe(s.channel, (message: string) => s.onMessage(message));
      })
      .then(
        () => {
          if (this.sub !== sub) return;
          this.reopening = false;
          this.changed();
        },
        (err: Error) => {
          // Closed meanwhile, or the new subscribing connection failed: try once more with new ones.
          if (this.closed || this.sub !== sub) return;
          this.opts.onError?.(err);
          this.reopening = false;
          this.reopen();
        },
      );
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const c of [this.sub, this.pub]) {
      if (!c.isOpen) continue;
      // A connection still (re)connecting is destroyed: close() would wait for it to come up.
      if (!c.isReady) {
        c.destroy();
        continue;
      }
      try {
        await c.close();
      } catch {
        c.destroy();
      }
    }
    this.changed();
  }
}
