/**
 * `arr.push(item)` for arrays that usually stay small (a run's events and
 * spans, a trace's spans): up to `EXACT_UP_TO` elements the array is copied
 * at its exact size, because `push` on a small array reserves 16 more slots
 * (128 bytes) than it holds, and these arrays live as long as their run.
 * Past that it grows by `push`. Returns the array to keep.
 *
 * The copy is written out (array literals, then a loop into a preallocated
 * array): `arr.concat([item])` allocates a second array and takes the
 * builtin's generic path, about 10× slower for these sizes.
 */
export function append<T>(arr: T[] | undefined, item: T): T[] {
  const n = arr === undefined ? 0 : arr.length;
  if (n === 0) return [item];
  const a = arr!;
  if (n >= EXACT_UP_TO) {
    a.push(item);
    return a;
  }
  if (n === 1) return [a[0]!, item];
  if (n === 2) return [a[0]!, a[1]!, item];
  if (n === 3) return [a[0]!, a[1]!, a[2]!, item];
  const out = new Array<T>(n + 1);
  for (let i = 0; i < n; i++) out[i] = a[i]!;
  out[n] = item;
  return out;
}

/** Arrays are kept at their exact size up to this many elements. */
export const EXACT_UP_TO = 8;

/** Two lists of seqs as one, ascending, each once (undefined if both are). */
export function mergeSeqs(a: readonly number[] | undefined, b: readonly number[] | undefined): number[] | undefined {
  if (a === undefined && b === undefined) return undefined;
  return [...new Set([...(a ?? []), ...(b ?? [])])].sort((x, y) => x - y);
}
