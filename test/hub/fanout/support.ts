import { spawn, type ChildProcess } from 'node:child_process';
import * as net from 'node:net';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClient } from '@redis/client';
import { binaryGate } from '../../ops/support.js';

/** A client as `createClient()` with no modules makes it (RESP 3). */
function plainClient(path: string) {
  return createClient({ socket: { path, tls: false } });
}
type RedisTestClient = ReturnType<typeof plainClient>;

/** redis-server (Debian's `redis-server` package): skipped locally when missing, a failure in CI. */
export const redisGate = binaryGate('redis-server');

/**
 * A real redis-server for one test file: no TCP port (a unix socket in a
 * temporary directory), no persistence. `stop()` and `start()` again on the
 * same socket play a broker outage.
 */
export class RedisServer {
  readonly dir = mkdtempSync(join(tmpdir(), 'tw-redis-'));
  readonly socket = join(this.dir, 'redis.sock');
  private proc: ChildProcess | undefined;

  get url(): string {
    return `unix://${this.socket}`;
  }

  async start(): Promise<void> {
    this.proc = spawn(redisGate.path ?? 'redis-server', ['--port', '0', '--unixsocket', this.socket, '--save', '', '--appendonly', 'no', '--dir', this.dir], { stdio: 'ignore' });
    const deadline = Date.now() + 10_000;
    while (!existsSync(this.socket)) {
      if (Date.now() > deadline) throw new Error('redis-server did not open its socket within 10 s');
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async stop(): Promise<void> {
    const p = this.proc;
    if (p === undefined || p.exitCode !== null) return;
    const exited = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await exited;
    rmSync(this.socket, { force: true });
  }

  async destroy(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** A plain client of this server (to play a sidecar that misbehaves). */
  async client(): Promise<RedisTestClient> {
    const c = plainClient(this.socket);
    c.on('error', () => undefined);
    await c.connect();
    return c;
  }
}

/**
 * A TCP proxy in front of a redis-server's unix socket, to play a network
 * path that dies without a word: `blackhole()` makes the connections open now
 * lose everything, both ways, while staying open (no FIN, no RST: a
 * half-open connection as the client sees it; when the client gives one up,
 * Redis does not hear of it either). With `newOnes`, connections opened
 * later are dead too, until `heal()`.
 */
export class BrokerProxy {
  private readonly pairs = new Set<[net.Socket, net.Socket]>();
  private readonly dead = new WeakSet<net.Socket>();
  private deadNew = false;
  private server!: net.Server;
  /** Connections accepted so far. */
  accepted = 0;

  constructor(private readonly socketPath: string) {}

  async start(): Promise<this> {
    this.server = net.createServer((client) => {
      this.accepted++;
      const upstream = net.connect(this.socketPath);
      const pair: [net.Socket, net.Socket] = [client, upstream];
      this.pairs.add(pair);
      if (this.deadNew) this.dead.add(client);
      client.on('data', (d) => {
        if (!this.dead.has(client)) upstream.write(d);
      });
      upstream.on('data', (d) => {
        if (!this.dead.has(client)) client.write(d);
      });
      client.on('error', () => undefined);
      upstream.on('error', () => undefined);
      client.on('close', () => {
        // A dead path loses the close too: Redis keeps its side.
        if (this.dead.has(client)) return;
        this.pairs.delete(pair);
        upstream.destroy();
      });
      upstream.on('close', () => {
        this.pairs.delete(pair);
        client.destroy();
      });
    });
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    return this;
  }

  get url(): string {
    return `redis://127.0.0.1:${(this.server.address() as net.AddressInfo).port}`;
  }

  /** The connections open now (and with `newOnes`, those opened until `heal()`) carry nothing more and are not closed. */
  blackhole(newOnes = false): void {
    for (const [c] of this.pairs) this.dead.add(c);
    this.deadNew = newOnes;
  }

  /** New connections pass again (those already dead stay dead). */
  heal(): void {
    this.deadNew = false;
  }

  async close(): Promise<void> {
    for (const [c, u] of this.pairs) {
      c.destroy();
      u.destroy();
    }
    this.pairs.clear();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
