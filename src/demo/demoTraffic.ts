import { BasicTracerProvider, BatchSpanProcessor, type SpanProcessor } from '@opentelemetry/sdk-trace-base';
import WebSocket from 'ws';
import { startSidecar, type Sidecar } from '../surfaces/server.js';
import { Tracewire } from '../Tracewire.js';
import type { TracewireConfig } from '../config/Config.js';
import { TracewireError } from '../errors/errors.js';
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
  // Checked before anything starts: no users would mean runs with no user at all.
  for (const [name, v, min] of [['users', o.users, 1], ['runs', o.runs, 0], ['intervalMillis', o.intervalMillis, 0], ['stepMillis', o.stepMillis, 0]] as const) {
    if (!Number.isSafeInteger(v) || v < min) throw new TracewireError('TW_CONFIG_INVALID', `demo ${name}=${String(v)} is not a whole number from ${min}`);
  }
  const failUser = o.failUser;
  const tw = new Tracewire({ ...o.config, failWritesFor: failUser ? (u) => u === failUser : undefined });
  let sidecar: Sidecar;
  try {
    sidecar = await startSidecar(tw, o.config.listen, o.config.otlpListen);
  } catch (e) {
    await tw.close();
    throw e;
  }
  const inProc = new BasicTracerProvider({ spanProcessors: [tw.spanProcessor()] });
  let otlpProvider: BasicTracerProvider | undefined;
  const clients: WebSocket[] = [];
  const healthy = Array.from({ length: o.users }, (_, i) => `u-${i + 1}`);
  try {
    if (sidecar.otlpUrl !== undefined) {
      const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-proto');
      const exporter = new OTLPTraceExporter({ url: `${sidecar.otlpUrl}/v1/traces` });
      const bsp: SpanProcessor = new BatchSpanProcessor(exporter, { scheduledDelayMillis: 50 });
      otlpProvider = new BasicTracerProvider({ spanProcessors: [bsp] });
    }
    const connected = failUser ? [...healthy, failUser] : healthy;
    const wsBase = `${sidecar.publicUrl.replace(/^http/, 'ws')}/v1/events`;
    for (const user of connected) {
      const token = await tw.token(user, 24 * 3600);
      const ws = new WebSocket(wsBase, { headers: { authorization: `Bearer ${token}` } });
      ws.on('error', () => undefined);
      clients.push(ws);
      await new Promise<void>((resolve, reject) => {
        ws.once('message', () => resolve()); // the ack
        ws.once('error', reject);
        ws.once('close', () => reject(new Error(`the demo client of ${user} was closed before its ack`)));
      });
      if (user === healthy[0] && !o.quiet) {
        ws.on('message', (data) => {
          const f = JSON.parse(data.toString()) as { type: string; seq: number; agent: string; data: Record<string, unknown>; code?: string; message?: string };
          if (f.type === 'error') return o.print(`(${f.code}: ${f.message})`);
          o.print(`${o.runs === 1 ? '' : `[${user}] `}#${String(f.seq).padStart(2)} ${f.type.padEnd(16)} ${String(f.agent).padEnd(11)} ${JSON.stringify(f.data)}`);
        });
      }
    }
  } catch (e) {
    // Nothing may keep the process alive after a failed start.
    for (const ws of clients) ws.terminate();
    await otlpProvider?.shutdown();
    await sidecar.close();
    throw e;
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
  let stopping: Promise<void> | undefined;
  return {
    sidecar,
    finished,
    /** Stops the traffic, the clients and the sidecar; later calls wait for the first. */
    stop() {
      return (stopping ??= (async () => {
        stopped = true;
        await finished.catch(() => undefined);
        for (const ws of clients) ws.close();
        await otlpProvider?.shutdown();
        await sidecar.close();
      })());
    },
  };
}
