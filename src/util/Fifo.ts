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
