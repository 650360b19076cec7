import { BasicTracerProvider, BatchSpanProcessor, type SpanProcessor } from '@opentelemetry/sdk-trace-base';
import WebSocket from 'ws';
import { startSidecar, type Sidecar } from '../surfaces/server.js';
import { Tracewire } from '../Tracewire.js';
import type { TracewireConfig } from '../config/Config.js';
import { runDemoAgent } from './demoAgent.js';

export interface DemoOptions {
  readonly config: TracewireConfig;
  /** Runs to start; 0 runs until stopped. */
  readonly runs: number;
  readonly intervalMillis: number;
  /** Healthy users u-1..u-N, each with a connected client. */
  readonly users: number;
  /** A user whose client is connected and acked but whose sends fail. */
  readonly failUser?: string;
  /** A user with runs and no client at all. */
  readonly offlineUser?: string;
  readonly stepMillis: number;
  /** Print what the first user's client receives. */
  readonly print: (line: string) => void;
  readonly quiet: boolean;
}

export interface DemoHandle {
  readonly sidecar: Sidecar;
  /** Resolves when the finite number of runs is done and judged. */
  readonly finished: Promise<void>;
  stop(): Promise<void>;
}

/**
 * A full sidecar plus synthetic agent traffic: healthy users with connected
 * clients, optionally a user whose sends fail (the silent failure tracewire
 * exists to catch) and a user nobody listens for. Part of the runs go through
 * the sidecar's own OTLP receiver with the real OTLP exporter, the rest
 * through the in-process processor.
 */
export async function startDemo(o: DemoOptions): Promise<DemoHandle> {
  const failUser = o.failUser;
  const tw = new Tracewire({ ...o.config, failWritesFor: failUser ? (u) => u === failUser : undefined });
  const sidecar = await startSidecar(tw, o.config.listen, o.config.otlpListen);
  const inProc = new BasicTracerProvider({ spanProcessors: [tw.spanProcessor()] });
  let otlpProvider: BasicTracerProvider | undefined;
  if (sidecar.otlpUrl !== undefined) {
    const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-proto');
    const exporter = new OTLPTraceExporter({ url: `${sidecar.otlpUrl}/v1/traces` });
    const bsp: SpanProcessor = new BatchSpanProcessor(exporter, { scheduledDelayMillis: 50 });
    otlpProvider = new BasicTracerProvider({ spanProcessors: [bsp] });
  }
  const healthy = Array.from({ length: o.users }, (_, i) => `u-${i + 1}`);
  const connected = failUser ? [...healthy, failUser] : healthy;
  const clients: WebSocket[] = [];
  const wsBase = `${sidecar.publicUrl.replace(/^http/, 'ws')}/v1/events`;
  for (const user of connected) {
    const token = await tw.token(user, 24 * 3600);
    const ws = new WebSocket(wsBase, { headers: { authorization: `Bearer ${token}` } });
    ws.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      ws.once('message', () => resolve()); // the ack
      ws.once('error', reject);
    });
    if (user === healthy[0] && !o.quiet) {
      ws.on('message', (data) => {
        const f = JSON.parse(data.toString()) as { type: string; seq: number; agent: string; data: Record<string, unknown>; code?: string; message?: string };
        if (f.type === 'error') return o.print(`(${f.code}: ${f.message})`);
        o.print(`${o.runs === 1 ? '' : `[${user}] `}#${String(f.seq).padStart(2)} ${f.type.padEnd(16)} ${String(f.agent).padEnd(11)} ${JSON.stringify(f.data)}`);
      });
    }
    clients.push(ws);
  }
  const targets = [...healthy, ...(failUser ? [failUser] : []), ...(o.offlineUser ? [o.offlineUser] : [])];
  let stopped = false;
  let n = 0;
  const inflight = new Set<Promise<unknown>>();
  const finished = (async () => {
    while (!stopped && (o.runs === 0 || n < o.runs)) {
      const user = targets[n % targets.length]!;
      // Every third run of the last healthy user goes through OTLP when the receiver is up.
      const viaOtlp = otlpProvider !== undefined && user === healthy[healthy.length - 1] && n % 3 === 2;
      const tracer = (viaOtlp ? otlpProvider! : inProc).getTracer('tracewire-demo');
      const p = runDemoAgent(tracer, { user, conversation: `conv-${user}-${n}`, stepMillis: o.stepMillis }).catch(() => undefined);
      inflight.add(p);
      void p.finally(() => inflight.delete(p));
      n++;
      await new Promise((r) => setTimeout(r, o.intervalMillis));
    }
    await Promise.all(inflight);
    await otlpProvider?.forceFlush();
    // Verdicts come after the grace period.
    await new Promise((r) => setTimeout(r, o.config.graceMillis + 200));
  })();
  return {
    sidecar,
    finished,
    async stop() {
      stopped = true;
      await finished.catch(() => undefined);
      for (const ws of clients) ws.close();
      await otlpProvider?.shutdown();
      await sidecar.close();
    },
  };
}
