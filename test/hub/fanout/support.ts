import { spawn, type ChildProcess } from 'node:child_process';
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
