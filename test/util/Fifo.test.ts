import { describe, expect, it } from 'vitest';
import { Fifo } from '../../src/util/Fifo.js';

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
});
