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

  it('touch makes a key the most recently used, so it is forgotten last, however many keys come and go', () => {
    const m = new BoundedMap<string, number>(3);
    m.set('a', 1).set('b', 2).set('c', 3);
    expect(m.touch('a')).toBe(true);
    expect(m.touch('zz')).toBe(false);
    m.set('d', 4); // forgets b, not a
    expect(m.has('a')).toBe(true);
    expect(m.has('b')).toBe(false);
    expect([...m.values()]).toEqual([3, 1, 4]); // least recently used first
    m.set('e', 5); // forgets c
    m.touch('e'); // already the newest
    m.set('f', 6); // forgets a
    expect([...m.values()]).toEqual([4, 5, 6]);

    // A key in use stays, whatever else is set and touched around it.
    const n = new BoundedMap<string, number>(100);
    n.set('long', 0);
    for (let i = 0; i < 10_000; i++) {
      n.set(`k${i}`, i);
      for (let t = 0; t < 5; t++) n.touch(`k${i - (t * 7) % 50}`);
      n.touch('long');
      expect(n.size).toBeLessThanOrEqual(100);
    }
    expect(n.has('long')).toBe(true);
    // Once no longer used, it goes after `capacity` other keys.
    for (let i = 0; i < 99; i++) n.set(`x${i}`, i);
    expect(n.has('long')).toBe(true);
    n.set('x99', 99);
    expect(n.has('long')).toBe(false);
    expect(n.size).toBe(100);
  });

  it('stays bounded and agrees with a plain model under random set, touch and delete', () => {
    const cap = 7;
    const m = new BoundedMap<number, number>(cap);
    const model: number[] = []; // keys, least recently used first
    let seed = 42;
    const rnd = (k: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % k;
    };
    for (let i = 0; i < 20_000; i++) {
      const key = rnd(20);
      const op = rnd(3);
      const at = model.indexOf(key);
      if (op === 0) {
        m.set(key, i);
        if (at < 0) {
          model.push(key);
          if (model.length > cap) model.shift();
        }
      } else if (op === 1) {
        expect(m.touch(key)).toBe(at >= 0);
        if (at >= 0) model.push(...model.splice(at, 1));
      } else {
        expect(m.delete(key)).toBe(at >= 0);
        if (at >= 0) model.splice(at, 1);
      }
      expect(m.size).toBe(model.length);
    }
    for (const k of model) expect(m.has(k)).toBe(true);
  });
});
