/**
 * `arr.push(item)` for arrays that usually stay small: the first element
 * gets an exact-size array, because `[].push` reserves 17 slots (136 bytes)
 * and most runs have a handful of events, spans and runs per trace.
 * Returns the array to keep.
 */
export function append<T>(arr: T[] | undefined, item: T): T[] {
  if (arr === undefined || arr.length === 0) return [item];
  arr.push(item);
  return arr;
}
