/**
 * `arr.push(item)` for arrays that usually stay small (a run's events and
 * spans, a trace's spans): up to `EXACT_UP_TO` elements the array is copied
 * at its exact size, because `push` on a small array reserves 16 more slots
 * (128 bytes) than it holds, and these arrays live as long as their run.
 * Past that it grows by `push`. Returns the array to keep.
 */
export function append<T>(arr: T[] | undefined, item: T): T[] {
  if (arr === undefined || arr.length === 0) return [item];
  if (arr.length < EXACT_UP_TO) return arr.concat([item]);
  arr.push(item);
  return arr;
}

/** Arrays are kept at their exact size up to this many elements. */
export const EXACT_UP_TO = 8;
