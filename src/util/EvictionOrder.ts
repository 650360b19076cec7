import { Fifo } from './Fifo.js';

/**
 * The entries of a bounded table in the order they came, for evicting the
 * oldest one in O(1) while entries also leave from anywhere in any order.
 *
 * Why not the table's own Map order (`map.keys().next()`): V8 leaves deleted
 * entries in place until the table is rehashed, so finding the first live key
 * scans every deleted one before it (see BoundedMap), and a table whose
 * oldest entries keep leaving pays that scan on every eviction.
 *
 * The owner says when an entry left (`left()`); entries that are no longer
 * live (`isLive`) go from the front as they reach it, and all at once when
 * there are more than 1,024 of them and they are more than an eighth of the
 * queue (an old entry that stays, such as a long run's trace, keeps the ones
 * behind it from the front, and they keep their objects alive). So it holds
 * the live entries and at most 1,024 or a seventh as many besides.
 */
export class EvictionOrder<T> {
  private readonly q = new Fifo<T>();
  private stale = 0;

  constructor(private readonly isLive: (entry: T) => boolean) {}

  /** Entries held, live and not (tests check it stays bounded). */
  get length(): number {
    return this.q.length;
  }

  push(entry: T): void {
    this.q.push(entry);
  }

  /** The oldest live entry, left in place (the owner evicts it, then calls `left()`). */
  oldest(): T | undefined {
    this.dropFront();
    return this.q.peek();
  }

  /** The oldest live entry is in use: it moves to the back (the next oldest goes first). */
  requeueOldest(): void {
    this.dropFront();
    const x = this.q.shift();
    if (x !== undefined) this.q.push(x);
  }

  /** An entry is no longer live. */
  left(): void {
    this.stale++;
    // Tables mostly lose their oldest entries first: the front stays live and nothing is left to compact.
    this.dropFront();
    if (this.stale > COMPACT_FROM && this.stale * 8 > this.q.length) {
      this.q.retain(this.isLive);
      this.stale = 0;
    }
  }

  clear(): void {
    this.q.clear();
    this.stale = 0;
  }

  private dropFront(): void {
    const q = this.q;
    for (let x = q.peek(); x !== undefined && !this.isLive(x); x = q.peek()) {
      q.shift();
      if (this.stale > 0) this.stale--;
    }
  }
}

/** Entries no longer live kept before a compaction, at the least. */
const COMPACT_FROM = 1024;
