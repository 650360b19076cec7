import type { SpanInput } from '../../conventions/SpanInput.js';

/**
 * An OTLP request's spans in an order the bridge can emit from: a span's
 * ended record comes after every record of its children in the same request,
 * (and of their descendants that do not end in it), and after its own start
 * record (a live export's). Otherwise request order is kept.
 *
 * Why: a parent's end closes what it encloses (the top-level agent's end is
 * its run's `agent_completed`, which must be last), so a child handled after
 * it is late and its events are lost. Exporters send spans in end order, but
 * group each request by resource and instrumentation scope: the spans of one
 * run made by two tracers (an agent framework and a tool library, say) come
 * scope by scope, a tool's after its agent's. The Collector groups the same
 * way across services.
 *
 * Cost: one pass over the spans with a Set of the ended span ids, to find
 * out whether the request needs reordering (most do not: 55–75 ns a span);
 * the reordering itself is linear.
 */
export function causalOrder(spans: readonly SpanInput[]): readonly SpanInput[] {
  if (spans.length < 2 || inOrder(spans)) return spans;
  return reorder(spans);
}

/** No record follows the ended record of its parent, or of its own span. (Span ids alone: a collision across traces only costs a reorder.) */
function inOrder(spans: readonly SpanInput[]): boolean {
  const ended = new Set<string>();
  for (const s of spans) {
    if (s.parentSpanId && ended.has(s.parentSpanId)) return false;
    if (s.endMs === undefined) {
      if (ended.has(s.spanId)) return false;
    } else ended.add(s.spanId);
  }
  return true;
}

function reorder(spans: readonly SpanInput[]): SpanInput[] {
  const n = spans.length;
  // Keyed by span id alone: two traces sharing a span id (random 64-bit ids) would only add an order
  // constraint between their spans, never drop one, so the trace id need not be part of the key.
  const startOf = new Map<string, number>();
  const ended = new Set<string>();
  const childrenOf = new Map<string, number[]>();
  for (let i = 0; i < n; i++) {
    const s = spans[i]!;
    if (s.endMs !== undefined) ended.add(s.spanId);
    else if (!startOf.has(s.spanId)) startOf.set(s.spanId, i);
    if (s.parentSpanId) {
      const list = childrenOf.get(s.parentSpanId);
      if (list === undefined) childrenOf.set(s.parentSpanId, [i]);
      else list.push(i);
    }
  }
  // What must come before an ended record: its span's start record, and the records of its
  // descendants down to the nearest ones that end in this request (their own records bring theirs).
  const prereqs = (i: number): readonly number[] => {
    const s = spans[i]!;
    if (s.endMs === undefined) return NONE;
    const start = startOf.get(s.spanId);
    const kids = childrenOf.get(s.spanId);
    if (kids === undefined) return start === undefined ? NONE : [start];
    const list = start === undefined ? kids.slice() : [start, ...kids];
    let sorted = start === undefined;
    let open: string[] | undefined;
    let seen: Set<string> | undefined;
    for (const c of kids) {
      const id = spans[c]!.spanId;
      if (!ended.has(id)) (open ??= []).push(id);
    }
    if (open !== undefined) {
      seen = new Set([s.spanId, ...open]);
      while (open.length > 0) {
        for (const c of childrenOf.get(open.pop()!) ?? NONE) {
          list.push(c);
          sorted = false;
          const id = spans[c]!.spanId;
          if (!ended.has(id) && !seen.has(id)) {
            seen.add(id);
            open.push(id);
          }
        }
      }
    }
    return sorted ? list : list.sort((a, b) => a - b);
  };
  const out: SpanInput[] = [];
  // 0: not visited, 1: on the stack (its prerequisites being placed), 2: placed.
  const state = new Uint8Array(n);
  const pre: Array<readonly number[] | undefined> = new Array(n);
  // Explicit stack (a chain of thousands of spans must not overflow the call stack): a record, and how many of its prerequisites were looked at.
  const stack: number[] = [];
  const next: number[] = [];
  for (let root = 0; root < n; root++) {
    if (state[root] !== 0) continue;
    state[root] = 1;
    stack.push(root);
    next.push(0);
    while (stack.length > 0) {
      const top = stack.length - 1;
      const i = stack[top]!;
      const list = (pre[i] ??= prereqs(i));
      const j = next[top]!;
      if (j < list.length) {
        next[top] = j + 1;
        const c = list[j]!;
        // A record already placed, or on the stack (a parent cycle in a malformed request), is not waited for.
        if (state[c] === 0) {
          state[c] = 1;
          stack.push(c);
          next.push(0);
        }
        continue;
      }
      stack.pop();
      next.pop();
      state[i] = 2;
      out.push(spans[i]!);
    }
  }
  return out;
}

const NONE: readonly number[] = [];
