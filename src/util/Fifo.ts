/**
 * A first-in first-out queue on an array with a head index: `shift()` is O(1)
 * and clears the slot it leaves (a consumed entry is not kept alive), and the
 * array is cut once the consumed prefix is most of it (amortised O(1)).
 * `Array.prototype.shift` is O(n), and a Map used as a FIFO scans its deleted
 * entries (see BoundedMap).
 */
export class Fifo<T> {
  private items: Array<T | undefined> = [];
  private head = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(x: T): void {
    this.items.push(x);
  }

  /** The oldest entry, left in place. */
  peek(): T | undefined {
    return this.items[this.head];
  }

  /** Take the oldest entry out. */
  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const x = this.items[this.head];
    this.items[this.head++] = undefined;
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return x;
  }

  /** Keep only the entries `keep` accepts, in order (for entries that leave from the middle). */
  retain(keep: (x: T) => boolean): void {
    this.items = (this.items.slice(this.head) as T[]).filter(keep);
    this.head = 0;
  }

  clear(): void {
    this.items = [];
    this.head = 0;
  }

  /** The entries, oldest first. */
  *[Symbol.iterator](): IterableIterator<T> {
    for (let i = this.head; i < this.items.length; i++) yield this.items[i] as T;
  }
}

/**
 * A first-in first-out queue of numbers (times) in a ring of a Float64Array:
 * the values are stored unboxed. (A plain array of numbers whose consumed
 * slots are cleared to `undefined`, like `Fifo`'s, stores each number as a
 * heap object, and times such as `Date.now()` are not small integers.) It
 * doubles when full and halves when a quarter full, down to its initial size.
 */
export class NumberFifo {
  private buf = new Float64Array(NUMBER_FIFO_MIN);
  private head = 0;
  private n = 0;

  get length(): number {
    return this.n;
  }

  push(x: number): void {
    if (this.n === this.buf.length) this.resize(this.buf.length * 2);
    this.buf[(this.head + this.n) & (this.buf.length - 1)] = x;
    this.n++;
  }

  /** The oldest entry, left in place. */
  peek(): number | undefined {
    return this.n === 0 ? undefined : this.buf[this.head];
  }

  /** Take the oldest entry out. */
  shift(): number | undefined {
    if (this.n === 0) return undefined;
    const x = this.buf[this.head]!;
    this.head = (this.head + 1) & (this.buf.length - 1);
    this.n--;
    if (this.buf.length > NUMBER_FIFO_MIN && this.n * 4 <= this.buf.length) this.resize(this.buf.length / 2);
    return x;
  }

  clear(): void {
    this.buf = new Float64Array(NUMBER_FIFO_MIN);
    this.head = 0;
    this.n = 0;
  }

  private resize(size: number): void {
    const old = this.buf;
    const b = new Float64Array(size);
    for (let i = 0; i < this.n; i++) b[i] = old[(this.head + i) & (old.length - 1)]!;
    this.buf = b;
    this.head = 0;
  }
}

/** A NumberFifo's initial (and smallest) ring size; a power of two. */
const NUMBER_FIFO_MIN = 64;
