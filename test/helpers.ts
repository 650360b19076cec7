import { BasicTracerProvider } from '@opentelemetry/sdk-trace-base';
import { context, trace, type Tracer } from '@opentelemetry/api';
import { existsSync } from 'node:fs';
import { chromium, type Browser } from 'playwright-core';
import WebSocket from 'ws';
import { startSidecar, type Sidecar } from '../src/surfaces/server.js';
import { Tracewire, type TracewireOptions } from '../src/Tracewire.js';

export interface Frame {
  type: string;
  [k: string]: unknown;
}

export const TEST_SECRET = 'test-secret-0123456789abcdef';

/** Debian's Chromium (CI installs it; `npx playwright install` cannot download browsers here). */
export const CHROMIUM = '/usr/bin/chromium';
export const hasChromium = existsSync(CHROMIUM);

/** Headless Chromium as every browser test drives it. */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update'],
  });
}

/** A real sidecar on port 0 (public + OTLP listeners). */
export async function startTestSidecar(opts: TracewireOptions = {}, withOtlp = false): Promise<Sidecar> {
  const tw = new Tracewire({ jwtSecret: TEST_SECRET, graceMillis: 100, wsHeartbeatMillis: 0, ...opts });
  return startSidecar(tw, { host: '127.0.0.1', port: 0 }, withOtlp ? { host: '127.0.0.1', port: 0 } : undefined);
}

/** A tracer whose spans go through the sidecar's in-process processor. */
export function inProcessTracer(sc: Sidecar): { tracer: Tracer; provider: BasicTracerProvider } {
  const provider = new BasicTracerProvider({ spanProcessors: [sc.tw.spanProcessor()] });
  return { tracer: provider.getTracer('test'), provider };
}

export class TestClient {
  readonly frames: Frame[] = [];
  /** Each frame's text as received. */
  readonly texts: string[] = [];
  closeCode: number | undefined;
  closeReason = '';
  private waiters: Array<() => void> = [];

  constructor(readonly ws: WebSocket) {
    ws.on('message', (data) => {
      const text = data.toString();
      this.texts.push(text);
      this.frames.push(JSON.parse(text) as Frame);
      this.wake();
    });
    ws.on('close', (code, reason) => {
      this.closeCode = code;
      this.closeReason = reason.toString();
      this.wake();
    });
    ws.on('error', () => undefined);
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  get events(): Frame[] {
    return this.frames.filter((f) => f.type !== 'ack' && f.type !== 'error' && f.type !== 'pong');
  }

  async until(pred: (c: TestClient) => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred(this)) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; frames: ${JSON.stringify(this.frames).slice(0, 2000)}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 50));
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  close(): void {
    this.ws.close();
  }
}

/** Connect a real ws client; resolves once open (not necessarily acked). */
export async function connect(sc: Sidecar, opts: { token?: string; user?: string; query?: string; headers?: Record<string, string>; protocols?: string[] } = {}): Promise<TestClient> {
  const token = opts.token ?? (opts.user ? await sc.tw.token(opts.user) : undefined);
  const url = `${sc.publicUrl.replace('http', 'ws')}/v1/events${opts.query ? `?${opts.query}` : ''}`;
  const headers: Record<string, string> = { ...(opts.headers ?? {}) };
  if (token !== undefined && !opts.query?.includes('access_token')) headers.authorization = `Bearer ${token}`;
  const ws = new WebSocket(url, opts.protocols ?? [], { headers });
  const c = new TestClient(ws);
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => reject(new Error(`unexpected response ${res.statusCode}`)));
  });
  return c;
}

export async function connectAcked(sc: Sidecar, user: string, query?: string): Promise<TestClient> {
  const c = await connect(sc, { user, query });
  await c.until((x) => x.frames.some((f) => f.type === 'ack'), 5000, 'ack');
  return c;
}

/**
 * One in-process run of `user`: an agent span `invoke_agent planner` with
 * `tools` ended tool spans below it (2 + 2 × tools expected events), ended;
 * resolves with its run id once it is judged.
 */
export async function judgedToolRun(sc: Sidecar, user: string, tools: number, timeoutMs = 5000): Promise<string> {
  const { tracer } = inProcessTracer(sc);
  const top = tracer.startSpan('invoke_agent planner', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'planner', 'user.id': user } });
  const ctx = trace.setSpan(context.active(), top);
  for (let i = 0; i < tools; i++) tracer.startSpan('execute_tool lookup', { attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'lookup' } }, ctx).end();
  top.end();
  const runId = `${top.spanContext().traceId}-${top.spanContext().spanId}`;
  await until(() => sc.tw.ledger.get(runId)?.judgement !== undefined, timeoutMs, 'verdict');
  return runId;
}

export async function until(pred: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Sum of a metric's samples matching the given labels, read from the registry. */
export async function metricValue(sc: Sidecar, name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = await sc.tw.metrics.registry.getSingleMetric(name)?.get();
  if (!m) throw new Error(`no metric ${name}`);
  let sum = 0;
  for (const v of m.values) {
    const l = v.labels as Record<string, string | number>;
    if (Object.entries(labels).every(([k, x]) => String(l[k]) === x)) sum += v.value;
  }
  return sum;
}
