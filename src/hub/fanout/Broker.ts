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

/** A connection that connected but is not ready (handshake, or subscribing after a reopen) within this is replaced. */
const READY_TIMEOUT_MILLIS = 5000;

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
 * disconnected fails at once rather than piling up in memory. Each
 * connection's `CLIENT ID` is noted when it is ready, so after `reopen` the
 * old ones, which Redis may still count as subscribers when the path died
 * silently, are killed.
 */
export class RedisBroker implements Broker {
  private pub: Client;
  private sub: Client;
  /** Each connection's id in Redis (`CLIENT ID`, asked when it is ready; best effort). */
  private readonly ids = new WeakMap<Client, number>();
  /** Ids of connections given up by `reopen` that Redis may still hold (killed once new ones are up). */
  private stale: number[] = [];
  /** What was subscribed, to subscribe again on new connections (`reopen`). */
  private readonly subscriptions: Array<{ channel: string; onMessage: (message: string) => void }> = [];
  /** New connections are coming up (`reopen`): not up until they are and the subscriptions are back. */
  private reopening = false;
  private started = false;
  private readonly listeners: Array<(up: boolean) => void> = [];
  private readonly waiting: Array<{ resolve: () => void; reject: (err: Error) => void }> = [];
  private wasUp = false;
  private closed = false;

  constructor(private readonly opts: RedisBrokerOptions) {
    [this.pub, this.sub] = this.clients();
  }

  /** A publishing and a subscribing connection, not yet connecting. */
  private clients(): [Client, Client] {
    return [this.client('publishing'), this.client('subscribing')];
  }

  private client(name: string): Client {
    const c = createClient(clientOptions(this.opts.url, this.opts.maxReconnectDelayMillis ?? 5000));
    let watchdog: NodeJS.Timeout | undefined;
    const settle = (): void => {
      clearTimeout(watchdog);
      watchdog = undefined;
      this.changed();
    };
    c.on('error', (err: Error) => this.opts.onError?.(err));
    // Connected but no handshake answer (a path that takes connections and carries nothing): new connections.
    c.on('connect', () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => {
        if (c !== this.pub && c !== this.sub) return;
        this.opts.onError?.(new Error(`${name} broker connection connected but not ready within ${READY_TIMEOUT_MILLIS} ms`));
        this.reopen();
      }, READY_TIMEOUT_MILLIS);
      watchdog.unref();
    });
    c.on('ready', () => {
      settle();
      // RESP3 (the client's default) takes it on a subscribed connection too. Refused (an ACL): not noted.
      c.sendCommand(['CLIENT', 'ID']).then(
        (id) => this.ids.set(c, Number(id)),
        () => this.ids.delete(c),
      );
    });
    c.on('end', settle);
    c.on('reconnecting', settle);
    return c;
  }

  /** Start connecting; resolves once both connections are up (retrying in the background until then), rejects if closed first. */
  async connect(): Promise<void> {
    if (!this.started) {
      this.started = true;
      this.open(this.pub, this.sub);
    }
    if (this.up) return;
    await new Promise<void>((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  /** Connect a pair (errors are reported as they retry; a pair given up meanwhile is ignored). */
  private open(...pair: Client[]): void {
    for (const c of pair) {
      c.connect().catch((err: Error) => {
        if (!this.closed && (c === this.pub || c === this.sub)) this.opts.onError?.(err);
      });
    }
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
      if (up) for (const w of this.waiting.splice(0)) w.resolve();
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
    // While new connections come up, they subscribe it with the rest.
    if (this.reopening) return;
    const sub = this.sub;
    try {
      await sub.subscribe(channel, (message: string) => onMessage(message));
    } catch (err) {
      if (sub === this.sub && !this.closed) throw err; // else given up by a reopen, which subscribes it again
    }
  }

  reopen(): void {
    if (this.closed) return;
    this.reopening = true;
    const old = [this.pub, this.sub];
    [this.pub, this.sub] = this.clients();
    // Commands waiting on the old connections (publishes) fail now, and their items count as not sent.
    for (const c of old) {
      c.removeAllListeners();
      c.on('error', () => undefined);
      const id = this.ids.get(c);
      if (id !== undefined) this.stale.push(id);
      if (c.isOpen) c.destroy();
    }
    this.changed();
    void this.resubscribe(this.pub, this.sub);
  }

  /** New connections: connect, subscribe again to everything, then they are up; the old ones are killed in Redis. */
  private async resubscribe(pub: Client, sub: Client): Promise<void> {
    const current = (): boolean => !this.closed && this.sub === sub;
    try {
      this.open(pub, sub);
      // Connection errors meanwhile are retried by the clients (with their backoff), not by a new reopen.
      await Promise.all([pub, sub].map((c) => (c.isReady ? undefined : new Promise((r) => c.once('ready', r)))));
      if (!current()) return;
      let timer: NodeJS.Timeout | undefined;
      const deadline = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`broker subscriptions not confirmed within ${READY_TIMEOUT_MILLIS} ms`)), READY_TIMEOUT_MILLIS);
        timer.unref();
      });
      try {
        for (let i = 0; i < this.subscriptions.length; i++) {
          const s = this.subscriptions[i]!;
          await Promise.race([sub.subscribe(s.channel, (message: string) => s.onMessage(message)), deadline]);
        }
      } finally {
        clearTimeout(timer);
      }
      if (!current()) return;
      this.reopening = false;
      this.changed();
      void this.killStale(pub);
    } catch (err) {
      // Closed or replaced meanwhile; else the new connections failed too: try again with new ones.
      if (!current()) return;
      this.opts.onError?.(err as Error);
      this.reopen();
    }
  }

  /**
   * Kill the connections given up by `reopen` that Redis still holds: when
   * the path died silently it still counts them as subscribers (until its
   * TCP keepalive gives up on them), and the fan-out waits for answers from
   * every subscriber. Best effort: CLIENT KILL may be refused by an ACL
   * (then Redis's own keepalive removes them, after 300 s by default).
   */
  private async killStale(pub: Client): Promise<void> {
    const ids = this.stale;
    this.stale = [];
    for (const id of ids) {
      try {
        await pub.sendCommand(['CLIENT', 'KILL', 'ID', String(id)]);
      } catch (err) {
        // Gone already ("No such client"), or refused.
        if (!/no such client/i.test((err as Error).message)) this.opts.onError?.(err as Error);
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const w of this.waiting.splice(0)) w.reject(new Error('broker closed'));
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
