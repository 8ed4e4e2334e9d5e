'use strict';

/**
 * A FIFO with O(1) push, shift and unshift: the client keeps thousands of
 * requests queued during a pipelined batch, and Array#shift is O(n).
 */
class Deque {
  constructor() {
    this.items = [];
    this.head = 0;
  }

  get length() {
    return this.items.length - this.head;
  }

  push(x) {
    this.items.push(x);
  }

  shift() {
    if (this.head >= this.items.length) return undefined;
    const x = this.items[this.head];
    this.items[this.head++] = undefined;
    // Compact once the dead prefix is half the array, so memory stays
    // proportional to what is queued.
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return x;
  }

  peek() {
    return this.head < this.items.length ? this.items[this.head] : undefined;
  }

  /** Puts xs, in their order, in front of everything queued. */
  unshiftAll(xs) {
    if (xs.length === 0) return;
    this.items = xs.concat(this.items.slice(this.head));
    this.head = 0;
  }

  /** Takes every item out, oldest first. */
  drain() {
    const out = this.items.slice(this.head);
    this.items = [];
    this.head = 0;
    return out;
  }

  /** Keeps the items for which keep(x) is true. */
  filter(keep) {
    this.items = this.items.slice(this.head).filter(keep);
    this.head = 0;
  }
}

module.exports = { Deque };
