import { describe, expect, it } from 'vitest';
import { BoundedMap } from '../../src/util/BoundedMap.js';

describe('BoundedMap', () => {
  it('keeps at most capacity keys, forgetting the oldest inserted first', () => {
    const m = new BoundedMap<string, number>(3);
    m.set('a', 1).set('b', 2).set('c', 3);
    m.set('a', 10); // an update keeps its age
    m.set('d', 4);
    expect(m.has('a')).toBe(false);
    expect([...m.values()]).toEqual([2, 3, 4]);
    expect(m.size).toBe(3);
    expect(() => new BoundedMap(0)).toThrow(RangeError);
  });

  it('a key deleted and set again counts from then: the slot it left forgets nothing', () => {
    const m = new BoundedMap<string, number>(3);
    m.set('a', 1).set('b', 2).set('c', 3);
    m.delete('a');
    m.set('d', 4); // takes a's old slot: nothing live is forgotten
    expect([...m.values()]).toEqual([2, 3, 4]);
    m.set('a', 5); // forgets b, the oldest live key
    expect(m.has('b')).toBe(false);
    m.set('e', 6).set('f', 7); // forget c, then d
    expect([...m.values()].sort()).toEqual([5, 6, 7]);
    m.set('g', 8); // a (set again after e.g. d) is the oldest now
    expect(m.has('a')).toBe(false);
    expect(m.size).toBe(3);

    // The ring comes round to the slot a key left before the key's new slot.
    const n = new BoundedMap<string, number>(3);
    n.set('a', 1);
    n.delete('a');
    n.set('b', 2).set('a', 3).set('c', 4); // three keys in three slots: none forgotten
    expect([...n.values()].sort()).toEqual([2, 3, 4]);
  });

  it('touch makes a key the newest, so it is forgotten last', () => {
    const m = new BoundedMap<string, number>(3);
    m.set('a', 1).set('b', 2).set('c', 3);
    expect(m.touch('a')).toBe(true);
    expect(m.touch('zz')).toBe(false);
    m.set('d', 4); // forgets b, not a
    expect(m.has('a')).toBe(true);
    expect(m.has('b')).toBe(false);
    m.set('e', 5); // forgets c
    expect([...m.values()].sort()).toEqual([1, 4, 5]);
    m.touch('e'); // already the newest: nothing changes
    m.set('f', 6); // forgets a
    expect(m.has('a')).toBe(false);
    expect(m.size).toBe(3);
    for (let i = 0; i < 100; i++) m.set(`k${i}`, i);
    expect(m.size).toBe(3);
  });
});
