import { context, diag, SpanStatusCode, TraceFlags, type Context, type HrTime } from '@opentelemetry/api';
import { ExportResultCode, suppressTracing, type ExportResult } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import type { ReadableSpan, Span, SpanExporter, SpanProcessor } from '@opentelemetry/sdk-trace-base';

export interface LiveSpanExporterOptions {
  /** The receiver's traces endpoint. Default `http://127.0.0.1:4318/v1/traces`. */
  readonly url?: string;
  /** The sidecar's ingest token (`--otlp-token`), sent as `Authorization: Bearer`. */
  readonly token?: string;
  /** More request headers. */
  readonly headers?: Readonly<Record<string, string>>;
  /** How long records wait to be batched before an export. Default 50. */
  readonly scheduledDelayMillis?: number;
  /** Records (span starts and ends) waiting for export; past it records are dropped and counted. Default 4096. */
  readonly maxQueueSize?: number;
  /** Records per export request. Default 512. */
  readonly maxExportBatchSize?: number;
  /** Bound on one export (the exporter retries within it). Default 10000. */
  readonly exportTimeoutMillis?: number;
  /** Export with this instead of an `OTLPTraceExporter` (another transport, tests). */
  readonly exporter?: SpanExporter;
}

const ZERO: HrTime = [0, 0];

/**
 * A SpanProcessor for Node apps whose events the tracewire sidecar delivers:
 * every span is exported twice through the real OTLP/HTTP protobuf exporter,
 * once when it starts (no end time: the sidecar emits its start event right
 * away, e.g. `agent_started` while the agent is still working) and once when
 * it ends. Records are batched briefly (`scheduledDelayMillis`), exported one
 * request at a time in hook order, and bounded: past `maxQueueSize` they are
 * dropped and counted (`droppedRecords`). The hooks are synchronous and never
 * throw; timers are unref'd; `shutdown()` runs once.
 *
 * ```ts
 * new NodeSDK({ spanProcessors: [new LiveSpanExporter({ url: 'http://tracewire:4318/v1/traces' })] })
 * ```
 */
export class LiveSpanExporter implements SpanProcessor {
  private readonly exporter: SpanExporter;
  private readonly delay: number;
  private readonly maxQueue: number;
  private readonly maxBatch: number;
  private readonly timeout: number;
  private queue: ReadableSpan[] = [];
  private timer: NodeJS.Timeout | undefined;
  private exporting: Promise<void> | undefined;
  private stopped = false;
  private shutdownOnce: Promise<void> | undefined;
  private dropped = 0;
  private failed = 0;
  private exported = 0;
  private warnedDrop = false;

  constructor(opts: LiveSpanExporterOptions = {}) {
    this.delay = Math.max(0, opts.scheduledDelayMillis ?? 50);
    this.maxQueue = Math.max(1, opts.maxQueueSize ?? 4096);
    this.maxBatch = Math.max(1, Math.min(opts.maxExportBatchSize ?? 512, this.maxQueue));
    this.timeout = Math.max(1, opts.exportTimeoutMillis ?? 10_000);
    const headers: Record<string, string> = { ...(opts.headers ?? {}) };
    if (opts.token) headers.Authorization = `Bearer ${opts.token}`;
    this.exporter =
      opts.exporter ??
      new OTLPTraceExporter({ url: opts.url ?? 'http://127.0.0.1:4318/v1/traces', headers, timeoutMillis: this.timeout });
  }

  /** Records dropped because the queue was full. */
  get droppedRecords(): number {
    return this.dropped;
  }
  /** Records whose export failed (after the exporter's own retries). */
  get failedRecords(): number {
    return this.failed;
  }
  /** Records exported successfully. */
  get exportedRecords(): number {
    return this.exported;
  }

  onStart(span: Span, _parentContext: Context): void {
    try {
      if (this.stopped || !sampled(span)) return;
      this.enqueue(startView(span));
    } catch {
      // Never into startSpan().
    }
  }

  onEnd(span: ReadableSpan): void {
    try {
      if (this.stopped || !sampled(span)) return;
      this.enqueue(span);
    } catch {
      // Never into span.end().
    }
  }

  /** Export everything queued so far (also what was queued while an export loop was ending). */
  async forceFlush(): Promise<void> {
    this.clearTimer();
    await this.drain();
    await this.exporter.forceFlush?.().catch(() => undefined);
  }

  /** Until nothing is queued and no export loop runs. */
  private async drain(): Promise<void> {
    while (this.queue.length > 0 || this.exporting !== undefined) {
      this.clearTimer();
      await this.pump();
    }
  }

  /** Export what is queued, then shut the exporter down. Runs once. */
  shutdown(): Promise<void> {
    return (this.shutdownOnce ??= (async () => {
      this.stopped = true;
      this.clearTimer();
      await this.drain();
      await this.exporter.shutdown().catch(() => undefined);
    })());
  }

  private enqueue(record: ReadableSpan): void {
    if (this.queue.length >= this.maxQueue) {
      this.dropped++;
      if (!this.warnedDrop) {
        this.warnedDrop = true;
        diag.warn(`tracewire LiveSpanExporter: queue full (${this.maxQueue}), dropping span records`);
      }
      return;
    }
    this.queue.push(record);
    if (this.exporting !== undefined) return; // the running export loop picks it up
    if (this.queue.length >= this.maxBatch) {
      this.clearTimer();
      void this.pump();
    } else if (this.timer === undefined) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        void this.pump();
      }, this.delay);
      this.timer.unref();
    }
  }

  private clearTimer(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
  }

  /** One export loop at a time, so a span's start always leaves before its end. */
  private pump(): Promise<void> {
    if (this.exporting !== undefined) return this.exporting;
    if (this.queue.length === 0) return Promise.resolve();
    const run = (async () => {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, this.maxBatch);
        const ok = await this.exportBatch(batch);
        if (ok) this.exported += batch.length;
        else this.failed += batch.length;
      }
    })();
    this.exporting = run.finally(() => {
      this.exporting = undefined;
      if (this.queue.length > 0 && this.timer === undefined) {
        this.timer = setTimeout(() => {
          this.timer = undefined;
          void this.pump();
        }, this.delay);
        this.timer.unref();
      }
    });
    return this.exporting;
  }

  private exportBatch(batch: ReadableSpan[]): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      let settled = false;
      const done = (ok: boolean): void => {
        if (settled) return;
        settled = true;
        clearTimeout(guard);
        resolve(ok);
      };
      // The exporter has its own timeout, but it is an idle timeout and its retries can run past it: the
      // next batch must not leave while this one may still be in flight (a span's end would overtake its
      // start), so this only guards against a callback that never comes, well past the exporter's bound.
      const guard = setTimeout(() => done(false), GUARD_TIMEOUTS * this.timeout + 1000);
      guard.unref();
      try {
        // No spans for the exporter's own HTTP calls.
        context.with(suppressTracing(context.active()), () => {
          this.exporter.export(batch, (r: ExportResult) => done(r.code === ExportResultCode.SUCCESS));
        });
      } catch {
        done(false);
      }
    });
  }
}

/** How many export timeouts (plus a second) a batch's callback may take before the next batch goes anyway. */
const GUARD_TIMEOUTS = 5;

function sampled(span: ReadableSpan | Span): boolean {
  return (span.spanContext().traceFlags & TraceFlags.SAMPLED) !== 0;
}

/**
 * The span as it is at its start, frozen for a later export: no end time
 * (serialised as end_time_unix_nano 0, which the sidecar reads as "started"),
 * no events, status unset, a copy of the attributes set so far.
 */
function startView(span: Span): ReadableSpan {
  const ctx = span.spanContext();
  return {
    name: span.name,
    kind: span.kind,
    spanContext: () => ctx,
    parentSpanContext: span.parentSpanContext,
    startTime: span.startTime,
    endTime: ZERO,
    status: { code: SpanStatusCode.UNSET },
    attributes: { ...span.attributes },
    links: span.links.slice(),
    events: [],
    duration: ZERO,
    ended: false,
    resource: span.resource,
    instrumentationScope: span.instrumentationScope,
    droppedAttributesCount: span.droppedAttributesCount,
    droppedEventsCount: 0,
    droppedLinksCount: span.droppedLinksCount,
  };
}
