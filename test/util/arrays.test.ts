import { describe, expect, it } from 'vitest';
import { append, EXACT_UP_TO } from '../../src/util/arrays.js';

describe('append', () => {
  it('keeps every element in order, copying small arrays and growing large ones in place', () => {
    let a: number[] | undefined;
    const seen: number[][] = [];
    for (let i = 0; i < EXACT_UP_TO + 5; i++) {
      const before = a;
      a = append(a, i);
      seen.push(a);
      expect(a).toEqual(Array.from({ length: i + 1 }, (_, k) => k));
      // Up to EXACT_UP_TO a new exact-size array (the caller keeps the returned one); past it the same array.
      if (before !== undefined && before.length >= EXACT_UP_TO) expect(a).toBe(before);
      else expect(a).not.toBe(before);
    }
    // An array handed out earlier is not changed by a later append while it was still small.
    expect(seen[2]).toEqual([0, 1, 2]);
  });

  it('starts a new array for undefined or empty input', () => {
    expect(append(undefined, 'x')).toEqual(['x']);
    const empty: string[] = [];
    const out = append(empty, 'y');
    expect(out).toEqual(['y']);
    expect(empty).toEqual([]);
  });
});
