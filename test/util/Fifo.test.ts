import { describe, expect, it } from 'vitest';
import { Fifo, NumberFifo } from '../../src/util/Fifo.js';

describe('Fifo', () => {
  it('gives entries back in order across compactions, and keeps no consumed entry', () => {
    const q = new Fifo<{ n: number }>();
    const out: number[] = [];
    for (let i = 0; i < 10_000; i++) {
      q.push({ n: i });
      if (i % 3 !== 0) out.push(q.shift()!.n);
    }
    expect(q.length).toBe(10_000 - out.length);
    while (q.length > 0) out.push(q.shift()!.n);
    expect(out).toEqual(Array.from({ length: 10_000 }, (_, i) => i));
    expect(q.shift()).toBeUndefined();
    expect(q.peek()).toBeUndefined();
    // What is left in the backing array is only what is still queued.
    q.push({ n: 1 });
    expect((q as unknown as { items: unknown[] }).items.filter((x) => x !== undefined)).toHaveLength(1);
  });

  it('retain() keeps the accepted entries in order; iteration starts at the head', () => {
    const q = new Fifo<number>();
    for (let i = 0; i < 10; i++) q.push(i);
    q.shift();
    q.retain((x) => x % 2 === 0);
    expect([...q]).toEqual([2, 4, 6, 8]);
    expect(q.peek()).toBe(2);
    q.clear();
    expect(q.length).toBe(0);
  });

  it('NumberFifo gives numbers back in order while it grows past and shrinks back to its ring size, through wrap-around', () => {
    const q = new NumberFifo();
    const expected: number[] = [];
    let next = 1_700_000_000_000.25;
    const out: number[] = [];
    // Grow to thousands, drain to a few, grow again: every resize happens with the ring wrapped.
    for (const [push, take] of [[5000, 4990], [70, 60], [3000, 3010], [10, 20]] as const) {
      for (let i = 0; i < push; i++) {
        q.push(next);
        expected.push(next);
        next += 1.5;
        if (i % 3 === 0 && q.length > 1) out.push(q.shift()!);
      }
      for (let i = 0; i < take && q.length > 0; i++) out.push(q.shift()!);
    }
    while (q.length > 0) {
      expect(q.peek()).toBe(expected[out.length]);
      out.push(q.shift()!);
    }
    expect(out).toEqual(expected);
    expect(q.shift()).toBeUndefined();
    expect(q.peek()).toBeUndefined();
    expect((q as unknown as { buf: Float64Array }).buf.length).toBe(64);
    q.push(3);
    q.clear();
    expect(q.length).toBe(0);
  });
});
