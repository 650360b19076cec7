import { describe, expect, it } from 'vitest';
import type { SpanInput } from '../../src/conventions/SpanInput.js';
import { causalOrder } from '../../src/sources/otlp/requestOrder.js';

const T = '0af7651916cd43dd8448eb211c80319c';
/** A span record: `id` ended unless `started` (a live export's start record). */
function rec(id: string, parent: string | undefined, started = false, traceId = T): SpanInput {
  return { traceId, spanId: id, parentSpanId: parent, name: id, startMs: 1, endMs: started ? undefined : 2, attributes: {}, statusCode: 0 };
}
const names = (xs: readonly SpanInput[]): string[] => xs.map((x) => `${x.spanId}${x.endMs === undefined ? '(start)' : ''}`);

describe('causalOrder: an OTLP request in an order the bridge can emit from', () => {
  it('a request in end order is handed on as it is (the same array)', () => {
    const spans = [rec('chat', 'agent'), rec('tool', 'agent'), rec('agent', undefined)];
    expect(causalOrder(spans)).toBe(spans);
  });

  it('grouped by scope: a child after its parent\'s end moves before it; the rest keeps request order', () => {
    const spans = [rec('chat', 'agent'), rec('agent', 'request'), rec('other', undefined), rec('tool', 'agent'), rec('request', undefined)];
    expect(names(causalOrder(spans))).toEqual(['chat', 'tool', 'agent', 'other', 'request']);
  });

  it('a span\'s end follows its own start record and its children\'s records, also through a child that has not ended', () => {
    // Live export grouped by scope: the agent's start and end, then the tool library's sub-span start and its child's end.
    const spans = [rec('agent', undefined, true), rec('agent', undefined), rec('sub', 'agent', true), rec('leaf', 'sub')];
    expect(names(causalOrder(spans))).toEqual(['agent(start)', 'sub(start)', 'leaf', 'agent']);
    // A start after its own end record.
    expect(names(causalOrder([rec('a', undefined), rec('a', undefined, true)]))).toEqual(['a(start)', 'a']);
  });

  it('a span id shared by two traces only adds an order between them: every record is placed once, each trace in causal order', () => {
    const U = 'ffffffffffffffffffffffffffffffff';
    const spans = [rec('p', undefined), rec('c', 'p', false, U), rec('c', 'p')];
    const out = causalOrder(spans);
    expect(out).toHaveLength(3);
    expect(new Set(out)).toEqual(new Set(spans));
    const inT = out.filter((x) => x.traceId === T).map((x) => x.spanId);
    expect(inT).toEqual(['c', 'p']);
  });

  it('a chain of 20,000 spans, parents first, is reversed without overflowing the stack; a parent cycle places every record once', () => {
    const chain = Array.from({ length: 20_000 }, (_, i) => rec(`s${i}`, i === 0 ? undefined : `s${i - 1}`));
    const out = causalOrder(chain);
    expect(out).toHaveLength(20_000);
    expect(out[0]!.spanId).toBe('s19999');
    expect(out.at(-1)!.spanId).toBe('s0');
    const cycle = [rec('a', 'b'), rec('b', 'a'), rec('c', 'a')];
    expect(names(causalOrder(cycle)).sort()).toEqual(['a', 'b', 'c']);
  });
});
