import { describe, expect, it } from 'vitest';
import { EvictionOrder } from '../../src/util/EvictionOrder.js';

/** A table (a Set of keys) with its eviction order, as the bridge keeps its traces, runs and held spans. */
function table(): { live: Set<number>; order: EvictionOrder<number>; add(k: number): void; remove(k: number): void } {
  const live = new Set<number>();
  const order = new EvictionOrder<number>((k) => live.has(k));
  return {
    live,
    order,
    add(k) {
      live.add(k);
      order.push(k);
    },
    remove(k) {
      if (live.delete(k)) order.left();
    },
  };
}

describe('EvictionOrder', () => {
  it('gives the oldest live entry, skipping entries that left from anywhere', () => {
    const t = table();
    for (let k = 1; k <= 5; k++) t.add(k);
    t.remove(1);
    t.remove(3);
    expect(t.order.oldest()).toBe(2);
    t.remove(2);
    expect(t.order.oldest()).toBe(4);
    t.remove(4);
    t.remove(5);
    expect(t.order.oldest()).toBeUndefined();
    expect(t.order.length).toBe(0);
  });

  it('a key that leaves and comes back is a new entry: its old place does not make it the oldest (entries told apart by identity)', () => {
    // As the bridge keeps traces: a Map by id, live when the Map still holds that very object.
    const byId = new Map<string, { id: string }>();
    const order = new EvictionOrder<{ id: string }>((e) => byId.get(e.id) === e);
    const add = (id: string): void => {
      const e = { id };
      byId.set(id, e);
      order.push(e);
    };
    const remove = (id: string): void => {
      if (byId.delete(id)) order.left();
    };
    add('a');
    add('b');
    add('c');
    remove('b'); // leaves from the middle: its entry stays behind a live front
    add('b'); // back, newest
    expect(order.oldest()!.id).toBe('a');
    remove('a');
    expect(order.oldest()!.id).toBe('c');
    remove('c');
    expect(order.oldest()!.id).toBe('b');
    expect(order.length).toBe(1);
  });

  it('stays bounded while an old entry stays and newer ones leave out of order', () => {
    const t = table();
    t.add(0); // stays at the front the whole time
    let most = 0;
    for (let k = 1; k <= 20_000; k++) {
      t.add(k);
      if (k % 10 !== 0) t.remove(k); // every tenth stays
      most = Math.max(most, t.order.length);
    }
    expect(t.live.size).toBe(2001);
    // The live entries, and at most 1,024 or a seventh as many of those that left.
    expect(most).toBeLessThanOrEqual(t.live.size + Math.max(1025, Math.ceil(t.live.size / 7)) + 1);
    expect(t.order.oldest()).toBe(0);
    // Oldest first, exactly the live ones, in the order they came.
    const out: number[] = [];
    for (let k = t.order.oldest(); k !== undefined; k = t.order.oldest()) {
      out.push(k);
      t.remove(k);
    }
    expect(out).toEqual([0, ...Array.from({ length: 2000 }, (_, i) => (i + 1) * 10)]);
    expect(t.order.length).toBe(0);
  });

  it('requeueOldest() moves the oldest live entry behind the others', () => {
    const t = table();
    for (let k = 1; k <= 3; k++) t.add(k);
    t.remove(1);
    t.order.requeueOldest(); // 2 is in use
    expect(t.order.oldest()).toBe(3);
    t.remove(3);
    expect(t.order.oldest()).toBe(2);
  });

  it('clear() empties it', () => {
    const t = table();
    t.add(1);
    t.order.clear();
    expect(t.order.length).toBe(0);
    expect(t.order.oldest()).toBeUndefined();
  });
});
