import { ROOT_CONTEXT } from '@opentelemetry/api';
import { BasicTracerProvider } from '@opentelemetry/sdk-trace-base';
import { performance } from 'node:perf_hooks';
import { describe, expect, it } from 'vitest';
import { Metrics } from '../../src/audit/Metrics.js';
import type { BridgeRegistry } from '../../src/bridge/BridgeRegistry.js';
import type { SpanInput } from '../../src/conventions/SpanInput.js';
import { TracewireSpanProcessor } from '../../src/sources/TracewireSpanProcessor.js';

/**
 * The in-process hook queue: spans and their hook times (kept in typed arrays
 * beside the queue) reach the bridge in hook order, each with the time its own
 * hook ran, also past the queue's first growth and when a drain runs inside a
 * drain (a callback that flushes).
 */

function recorder(onStart?: (s: SpanInput) => void): { seen: Array<{ span: SpanInput; ended: boolean }>; registry: BridgeRegistry } {
  const seen: Array<{ span: SpanInput; ended: boolean }> = [];
  const registry = {
    opts: { mode: 'emit' },
    startSpan: (s: SpanInput) => {
      seen.push({ span: s, ended: false });
      onStart?.(s);
    },
    endSpan: (s: SpanInput) => seen.push({ span: s, ended: true }),
  } as unknown as BridgeRegistry;
  return { seen, registry };
}

describe('TracewireSpanProcessor queue', () => {
  it('hands 5,000 spans (10,000 hooks) to the bridge in hook order, each with its own hook time', () => {
    const { seen, registry } = recorder();
    const p = new TracewireSpanProcessor(registry, new Metrics());
    const tracer = new BasicTracerProvider({ spanProcessors: [p] }).getTracer('t');
    const t0 = performance.now();
    const names: string[] = [];
    for (let i = 0; i < 5000; i++) {
      const s = tracer.startSpan(`s${i}`, {}, ROOT_CONTEXT);
      s.end();
      names.push(`s${i}`);
    }
    const t1 = performance.now();
    p.drain();
    expect(seen).toHaveLength(10_000);
    expect(seen.filter((x) => !x.ended).map((x) => x.span.name)).toEqual(names);
    expect(seen.map((x) => x.ended)).toEqual(names.flatMap(() => [false, true]));
    const times = seen.map((x) => x.span.hookAt!);
    for (let i = 1; i < times.length; i++) expect(times[i]!).toBeGreaterThanOrEqual(times[i - 1]!);
    expect(times[0]!).toBeGreaterThanOrEqual(t0);
    expect(times.at(-1)!).toBeLessThanOrEqual(t1);
  });

  it('a drain inside a drain keeps every hook time right', () => {
    const ref: { p?: TracewireSpanProcessor; tracer?: ReturnType<BasicTracerProvider['getTracer']> } = {};
    let nested = false;
    let innerCreated = 0;
    const { seen, registry } = recorder((s) => {
      // While the outer drain runs, a callback creates spans and flushes...
      if (s.name === 'outer-1' && !nested) {
        nested = true;
        for (let i = 0; i < 3; i++) ref.tracer!.startSpan(`inner-${i}`, {}, ROOT_CONTEXT).end();
        innerCreated = performance.now();
        ref.p!.drain();
      }
      // ...and while that inner drain runs, more spans are created (queued for the next drain).
      if (s.name === 'inner-0') for (let i = 0; i < 3; i++) ref.tracer!.startSpan(`deep-${i}`, {}, ROOT_CONTEXT).end();
    });
    const p = (ref.p = new TracewireSpanProcessor(registry, new Metrics()));
    const tracerRef = (ref.tracer = new BasicTracerProvider({ spanProcessors: [p] }).getTracer('t'));
    const before = performance.now();
    for (let i = 0; i < 3; i++) tracerRef.startSpan(`outer-${i}`, {}, ROOT_CONTEXT).end();
    const between = performance.now();
    p.drain();
    // The outer drain's hooks keep their times from before it started; the inner spans' came after.
    const outer = seen.filter((x) => x.span.name.startsWith('outer'));
    const inner = seen.filter((x) => x.span.name.startsWith('inner'));
    expect(outer).toHaveLength(6);
    expect(inner).toHaveLength(6);
    for (const x of outer) expect(x.span.hookAt!).toBeGreaterThanOrEqual(before);
    for (const x of outer) expect(x.span.hookAt!).toBeLessThanOrEqual(between);
    for (const x of inner) expect(x.span.hookAt!).toBeGreaterThan(between);
    for (const x of inner) expect(x.span.hookAt!).toBeLessThanOrEqual(innerCreated);
    // And the next burst after both drains is stamped right too.
    const after = performance.now();
    tracerRef.startSpan('later', {}, ROOT_CONTEXT).end();
    p.drain();
    const later = seen.filter((x) => x.span.name === 'later');
    expect(later).toHaveLength(2);
    for (const x of later) expect(x.span.hookAt!).toBeGreaterThanOrEqual(after);
    // The spans created during the inner drain went out with the next drain, stamped when they were created.
    const deep = seen.filter((x) => x.span.name.startsWith('deep'));
    expect(deep).toHaveLength(6);
    for (const x of deep) expect(x.span.hookAt!).toBeGreaterThan(innerCreated);
    for (const x of deep) expect(x.span.hookAt!).toBeLessThanOrEqual(after);
  });
});
