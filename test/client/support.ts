import net from 'node:net';
import WebSocket from 'ws';
import { TracewireClient, type ClientStatus, type TracewireClientError, type TracewireClientOptions, type TracewireEvent, type TracewireGap } from '../../src/client/TracewireClient.js';

/**
 * A TCP proxy on 127.0.0.1:0 in front of a port, for faults a real network
 * has: `cut()` resets every connection through it (the client sees 1006),
 * `freeze()` stops forwarding while the sockets stay open (a half-open
 * connection). Each connection's first line (the upgrade's request line)
 * is kept, to see what the client asked for.
 */
export class FaultProxy {
  readonly requestLines: string[] = [];
  private readonly pairs = new Set<[net.Socket, net.Socket]>();
  private frozen = false;
  /** New connections are reset at once (the server is down). */
  refusing = false;
  private server!: net.Server;
  port = 0;

  /** `target`: the port new connections go to (change it to play a load balancer that picks another server). */
  constructor(public target: number) {}

  async start(): Promise<this> {
    this.server = net.createServer((client) => {
      if (this.refusing) {
        client.resetAndDestroy();
        return;
      }
      const upstream = net.connect(this.target, '127.0.0.1');
      const pair: [net.Socket, net.Socket] = [client, upstream];
      this.pairs.add(pair);
      let first = true;
      client.on('data', (d) => {
        if (first) {
          first = false;
          this.requestLines.push(d.toString('latin1').split('\r\n', 1)[0]!);
        }
        if (!this.frozen) upstream.write(d);
      });
      upstream.on('data', (d) => {
        if (!this.frozen) client.write(d);
      });
      const end = (): void => {
        this.pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on('close', end).on('error', end);
      upstream.on('close', end).on('error', end);
    });
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this;
  }

  get url(): string {
    return `ws://127.0.0.1:${this.port}/v1/events`;
  }

  /** Reset every connection now (new ones still pass). */
  cut(): void {
    for (const [c, u] of this.pairs) {
      c.resetAndDestroy();
      u.destroy();
    }
    this.pairs.clear();
  }

  /** Stop forwarding on the connections open now; new connections pass again once thawed. */
  freeze(): void {
    this.frozen = true;
  }

  thaw(): void {
    this.frozen = false;
  }

  get connections(): number {
    return this.pairs.size;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

/** A TracewireClient over the `ws` package (Node 20 has no global WebSocket), recording what it hands out. */
export class RecordingClient {
  readonly client: TracewireClient;
  readonly events: TracewireEvent[] = [];
  readonly errors: TracewireClientError[] = [];
  readonly gaps: TracewireGap[] = [];
  readonly statuses: ClientStatus[] = [];

  constructor(opts: Omit<TracewireClientOptions, 'WebSocket'>) {
    this.client = new TracewireClient({ WebSocket, ...opts });
    this.client.on('event', (e) => this.events.push(e));
    this.client.on('error', (e) => this.errors.push(e));
    this.client.on('gap', (g) => this.gaps.push(g));
    this.client.on('status', (s) => this.statuses.push(s));
  }

  seqs(runId?: string): number[] {
    return this.events.filter((e) => runId === undefined || e.run_id === runId).map((e) => e.seq);
  }

  async until(pred: (c: RecordingClient) => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred(this)) {
      if (Date.now() > deadline) {
        throw new Error(`timed out waiting for ${what}; state ${this.client.status}, seqs ${JSON.stringify(this.seqs())}, errors ${JSON.stringify(this.errors)}`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  opens(): number {
    return this.statuses.filter((s) => s.state === 'open').length;
  }
}
