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
});
