import { propagation, trace, type Context } from '@opentelemetry/api';
import type { ReadableSpan, Span, SpanProcessor } from '@opentelemetry/sdk-trace-base';
import { performance } from 'node:perf_hooks';
import type { Metrics } from '../audit/Metrics.js';
import type { BridgeRegistry } from '../bridge/BridgeRegistry.js';
import { conversationOf, MAX_ID_CHARS, UNROUTABLE_USER, userOf } from '../conventions/classify.js';
import type { SpanInput } from '../conventions/SpanInput.js';
import { Diag } from '../errors/Diag.js';

export interface TracewireSpanProcessorOptions {
  /** Hook records waiting for the drain; past it records are dropped and counted. Default 65536. */
  readonly maxQueueSize?: number;
  /** Where drops and caught faults are reported. */
  readonly diag?: Diag;
}

type HrTime = [number, number];
const toMs = (t: HrTime): number => t[0] * 1000 + t[1] / 1e6;

/**
 * The in-process span source for `NodeSDK({ spanProcessors })`. The hooks
 * are synchronous and cheap: they push the span (and, on start, its parent
 * context) onto a bounded queue and return; classification, the bridge,
 * serialisation and sending run right after, in a microtask, off the hook.
 * They never throw into `startSpan()` / `span.end()`.
 */
export class TracewireSpanProcessor implements SpanProcessor {
  // Flat queue of [span, context|END] pairs, and each hook's time in a typed array beside it
  // (a time stored in a plain array would be a boxed number: an allocation per hook).
  private q: unknown[] = [];
  private times = new Float64Array(INITIAL_TIMES);
  /** The other time buffer (swapped at each drain, so hooks during a drain do not overwrite the times it reads). */
  private spareTimes = new Float64Array(INITIAL_TIMES);
  private scheduled = false;
  private draining = false;
  private isShutdown = false;
  private readonly max: number;
  private dropped = 0;
  private readonly diag: Diag;
  private readonly withEvents: boolean;
  private readonly drainFn = (): void => this.drain();
  /**
   * User and conversation known for a live span (own attributes, or inherited
   * from its nearest ancestor, or baggage), so a run started three levels
   * below the span that carries `user.id` still finds its user. Weak: freed
   * with the spans.
   */
  private readonly inherited = new WeakMap<object, Inherited>();

  constructor(
    private readonly registry: BridgeRegistry,
    private readonly metrics: Metrics,
    opts: TracewireSpanProcessorOptions = {},
  ) {
    this.max = (opts.maxQueueSize ?? 65536) * 2;
    this.diag = opts.diag ?? new Diag('warn');
    // Span events matter only to audit mode (agent.event); emit mode does not copy them per span.
    this.withEvents = registry.opts.mode === 'audit';
  }

  onStart(span: Span, parentContext: Context): void {
    if (this.isShutdown) return;
    if (this.q.length >= this.max) {
      this.dropped++;
      return;
    }
    this.stamp();
    this.q.push(span, parentContext);
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(this.drainFn);
    }
  }

  onEnd(span: ReadableSpan): void {
    if (this.isShutdown) return;
    if (this.q.length >= this.max) {
      this.dropped++;
      return;
    }
    this.stamp();
    this.q.push(span, END);
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(this.drainFn);
    }
  }

  /** Record the time of the hook being queued (at index q.length / 2). */
  private stamp(): void {
    const i = this.q.length >> 1;
    if (i === this.times.length) {
      const grown = new Float64Array(this.times.length * 2);
      grown.set(this.times);
      this.times = grown;
    }
    this.times[i] = performance.now();
  }

  /** Run the queued hooks through the bridge now. */
  drain(): void {
    this.scheduled = false;
    const q = this.q;
    if (q.length === 0) return;
    this.q = [];
    const times = this.times;
    // A drain inside a drain (a callback that flushes) must not hand out the buffer being read.
    const nested = this.draining;
    this.times = nested ? new Float64Array(INITIAL_TIMES) : this.spareTimes;
    this.draining = true;
    if (this.dropped > 0) {
      this.metrics.hookQueueDrops.inc(this.dropped);
      const max = this.max / 2;
      this.diag.repeated('queue_full', 'TracewireSpanProcessor', (n) => `dropped ${n} span records because the queue (${max}) was full`, this.dropped);
      this.dropped = 0;
    }
    for (let i = 0; i < q.length; i += 2) {
      try {
        const span = q[i] as ReadableSpan;
        const ctx = q[i + 1];
        const at = times[i >> 1]!;
        if (ctx === END) this.registry.endSpan(toInput(span, undefined, at, this.withEvents, this.inherited));
        else this.registry.startSpan(toInput(span, ctx as Context, at, false, this.inherited));
      } catch (err) {
        this.metrics.internalErrors.inc({ component: 'bridge' });
        this.diag.repeated('bridge_fault', 'TracewireSpanProcessor', (n) => `${n} span(s) failed in the bridge: ${(err as Error)?.stack ?? String(err)}`);
      }
    }
    this.draining = nested;
    if (!nested) this.spareTimes = times;
    this.metrics.spansSeen.inc({ source: 'in_process' }, q.length / 2);
  }

  forceFlush(): Promise<void> {
    this.drain();
    return Promise.resolve();
  }

  shutdown(): Promise<void> {
    if (!this.isShutdown) {
      this.drain();
      this.isShutdown = true;
    }
    return Promise.resolve();
  }
}

const END = Symbol('end');
/** Hook times kept before the buffer grows (it doubles up to the queue bound). */
const INITIAL_TIMES = 1024;

interface Inherited {
  readonly user: string | undefined;
  readonly conversation: string | undefined;
}

/** A baggage id within MAX_ID_CHARS, else `over` (as classify() reads ids: a user id over it is UNROUTABLE_USER, a conversation id absent). */
const boundedId = (v: string | undefined, over: string | undefined): string | undefined => (v === undefined || v.length <= MAX_ID_CHARS ? v : over);

/** A span start (`ctx` given: its parent context) or end (`ctx` undefined; `withEvents`: copy its span events). */
function toInput(span: ReadableSpan, ctx: Context | undefined, hookAt: number, withEvents: boolean, inherited: WeakMap<object, Inherited>): SpanInput {
  const ended = ctx === undefined;
  const sc = span.spanContext();
  const parent = span.parentSpanContext;
  let baggageUser: string | undefined;
  let baggageConversation: string | undefined;
  let parentUser: string | undefined;
  let parentConversation: string | undefined;
  if (ctx !== undefined) {
    const bag = propagation.getBaggage(ctx);
    if (bag !== undefined) {
      // Ids over MAX_ID_CHARS, as classify() reads them (never cut: two users would become one).
      baggageUser = boundedId(bag.getEntry('user.id')?.value ?? bag.getEntry('enduser.id')?.value, UNROUTABLE_USER);
      baggageConversation = boundedId(bag.getEntry('gen_ai.conversation.id')?.value ?? bag.getEntry('session.id')?.value, undefined);
    }
    const p = trace.getSpan(ctx) as unknown as { attributes?: Record<string, unknown> } | undefined;
    const fromAncestors = p !== undefined ? inherited.get(p) : undefined;
    // The parent's attributes now (they may have been set after it started), then what it inherited.
    const pa = p?.attributes;
    parentUser = (pa !== undefined ? userOf(pa) : undefined) ?? fromAncestors?.user;
    parentConversation = (pa !== undefined ? conversationOf(pa) : undefined) ?? fromAncestors?.conversation;
    const user = userOf(span.attributes) ?? parentUser ?? baggageUser;
    const conversation = conversationOf(span.attributes) ?? parentConversation ?? baggageConversation;
    if (user !== undefined || conversation !== undefined) {
      // A span that adds nothing shares its parent's entry instead of a copy per span.
      const same = fromAncestors !== undefined && fromAncestors.user === user && fromAncestors.conversation === conversation;
      inherited.set(span, same ? fromAncestors : { user, conversation });
    }
  }
  return {
    traceId: sc.traceId,
    spanId: sc.spanId,
    parentSpanId: parent?.spanId,
    parentIsRemote: parent?.isRemote === true,
    name: span.name,
    startMs: toMs(span.startTime as HrTime),
    endMs: ended ? toMs(span.endTime as HrTime) : undefined,
    attributes: span.attributes,
    statusCode: span.status.code,
    statusMessage: span.status.message,
    events: withEvents && span.events.length > 0 ? span.events.map((e) => ({ name: e.name, timeMs: toMs(e.time as HrTime), attributes: e.attributes ?? {} })) : undefined,
    baggageUser,
    baggageConversation,
    parentUser,
    parentConversation,
    hookAt,
  };
}
