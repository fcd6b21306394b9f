// A Clock that moves only when the test says so, for the lease manager's and the in-memory store's
// timers (renewal, expiry, backoff). advance() fires due timers in time order, letting the promise
// chains they start run in between.
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import type { Clock, TimerHandle } from '../../src/common/clock.js';

interface Timer extends TimerHandle {
  at: number;
  seq: number;
  fn: () => void;
}

export class ManualClock implements Clock {
  private time: number;
  private seq = 0;
  private readonly timers = new Set<Timer>();

  constructor(start = Date.UTC(2026, 0, 1)) {
    this.time = start;
  }

  now(): number {
    return this.time;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    const timer: Timer = { at: this.time + Math.max(0, ms), seq: this.seq++, fn, unref: () => undefined };
    this.timers.add(timer);
    return timer;
  }

  clearTimeout(handle: TimerHandle): void {
    this.timers.delete(handle as Timer);
  }

  /** Timers still pending. */
  get pending(): number {
    return this.timers.size;
  }

  /** Moves time forward by `ms`, firing every timer that falls due, in order. */
  async advance(ms: number): Promise<void> {
    const target = this.time + ms;
    for (;;) {
      await settle();
      let next: Timer | null = null;
      for (const t of this.timers) if (t.at <= target && (!next || t.at < next.at || (t.at === next.at && t.seq < next.seq))) next = t;
      if (!next) break;
      this.timers.delete(next);
      this.time = next.at;
      next.fn();
    }
    this.time = target;
    await settle();
  }

  /** Moves time in steps of `stepMs` until `work` settles (work that sleeps on this clock meanwhile). */
  async until<T>(work: Promise<T>, stepMs = 10, maxMs = 3_600_000): Promise<T> {
    let done = false;
    const tracked = work.finally(() => {
      done = true;
    });
    tracked.catch(() => undefined);
    for (let t = 0; !done && t < maxMs; t += stepMs) await this.advance(stepMs);
    return tracked;
  }
}

/** Lets pending promise chains (and microtask deliveries) run to completion. */
export async function settle(rounds = 20): Promise<void> {
  for (let i = 0; i < rounds; i++) await yieldToEventLoop();
}
