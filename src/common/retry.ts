// The one retry policy and the one retry loop. Every loop that tries again after a failure (etcd
// reconnects, watch resumes, lease claims and renewals, the config wait, kernel retries) waits with a
// Backoff — a delay that starts small, doubles up to a cap and is reset by success — spread by jitter
// so that nodes failing together do not retry together, and stops through an AbortSignal. A wait may
// end early through a wake-up signal (a Wakeup: "the store answers again").
import { type Clock, systemClock } from './clock.js';

/** Retry policy for etcd work: 0.5 s doubling up to 30 s. */
export const RETRY_MIN_MS = 500;
export const RETRY_MAX_MS = 30_000;
/** Each wait is the backoff's delay times a factor drawn from [1 − JITTER, 1 + JITTER]. */
export const RETRY_JITTER = 0.25;

export class Backoff {
  private current: number;

  /**
   * `jitter` (0 – 1) spreads each delay by up to that fraction either way; 0 gives the exact
   * doubling schedule. `random` is a number source in [0, 1) (tests pass a fixed one).
   */
  constructor(
    private readonly minMs = RETRY_MIN_MS,
    private readonly maxMs = RETRY_MAX_MS,
    private readonly jitter = 0,
    private readonly random: () => number = Math.random,
  ) {
    this.current = minMs;
  }

  /** The delay to wait now; the next call returns about twice as much, up to the cap. */
  next(): number {
    const delay = this.current;
    this.current = Math.min(this.current * 2, this.maxMs);
    if (this.jitter <= 0) return delay;
    return Math.round(delay * (1 - this.jitter + 2 * this.jitter * this.random()));
  }

  /** The delay (before jitter) the next call to next() will return, without advancing. */
  peek(): number {
    return this.current;
  }

  reset(): void {
    this.current = this.minMs;
  }
}

/** A backoff with the retry policy's jitter: what retry() uses unless given another. */
export function jitteredBackoff(minMs = RETRY_MIN_MS, maxMs = RETRY_MAX_MS): Backoff {
  return new Backoff(minMs, maxMs, RETRY_JITTER);
}

/**
 * Waits `ms`, or less: resolves early as soon as any of `signals` is aborted (a stop, or a wake-up such
 * as "etcd answers again"). Never rejects; the caller checks its own signal afterwards.
 */
export function pause(ms: number, ...signals: (AbortSignal | undefined)[]): Promise<void> {
  return pauseOn(systemClock, ms, ...signals);
}

/** pause() on `clock`'s timers (the lease manager's tests move a manual clock). */
export function pauseOn(clock: Clock, ms: number, ...signals: (AbortSignal | undefined)[]): Promise<void> {
  const live = signals.filter((s): s is AbortSignal => s !== undefined);
  if (live.some((s) => s.aborted)) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      clock.clearTimeout(timer);
      for (const s of live) s.removeEventListener('abort', done);
      resolve();
    };
    const timer = clock.setTimeout(done, ms);
    for (const s of live) s.addEventListener('abort', done, { once: true });
  });
}

/**
 * "Try again now", as a signal: wake() aborts the current signal and arms a fresh one, so that every
 * wait on `signal` ends, and waits begun afterwards wait for the next wake-up.
 */
export class Wakeup {
  private controller = new AbortController();

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  wake(): void {
    const woken = this.controller;
    this.controller = new AbortController();
    woken.abort();
  }
}

/** The error a stopped operation ends with: the signal's reason, or a plain AbortError. */
export function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('The operation was aborted', 'AbortError');
}

/** True for the error an aborted operation ends with (retry() throws it once its signal is aborted). */
export function isAbort(err: unknown): boolean {
  return err instanceof Error && err.name === 'AbortError';
}

export interface RetryOptions {
  /** Stops the loop: retry() then rejects with the signal's reason (an AbortError unless set otherwise). */
  signal?: AbortSignal;
  /** The delays; default jitteredBackoff(). Pass one to keep its state across calls. */
  backoff?: Backoff;
  /** Called after each failure with the error and the delay about to be waited (for logs and metrics). */
  onError?: (err: unknown, retryInMs: number, failures: number) => void;
  /** False for an error not worth retrying: retry() rejects with it at once. Default: retry every error. */
  retryIf?: (err: unknown) => boolean;
  /** A cap on the next delay, read after each failure (e.g. half the time a lease has left). */
  maxDelayMs?: () => number;
  /**
   * Read before each attempt: the wait after that attempt fails ends early (or is skipped) once this
   * signal is aborted, e.g. the store's "answers again" (a Wakeup's signal).
   */
  wakeup?: () => AbortSignal;
  /** Whose timers the default wait uses; default the system clock. */
  clock?: Clock;
  /** How to wait instead of the default pause on `clock` that ends on the signal or the wake-up. */
  wait?: (ms: number, signal: AbortSignal | undefined) => Promise<void>;
}

/**
 * Calls `attempt` until it resolves, waiting a backoff delay after each failure (less when the wake-up
 * signal is aborted meanwhile). Resolves with the attempt's result; rejects with the signal's reason
 * once the signal is aborted (checked before each attempt), or with an error `retryIf` refuses.
 */
export async function retry<T>(attempt: (signal: AbortSignal | undefined) => Promise<T>, opts: RetryOptions = {}): Promise<T> {
  const { signal } = opts;
  const backoff = opts.backoff ?? jitteredBackoff();
  const clock = opts.clock ?? systemClock;
  for (let failures = 1; ; failures++) {
    if (signal?.aborted) throw abortReason(signal);
    // Taken before the attempt: a wake-up during a failing attempt means "try again now", not after the delay.
    const wake = opts.wakeup?.();
    try {
      return await attempt(signal);
    } catch (err) {
      if (signal?.aborted) throw abortReason(signal);
      if (opts.retryIf && !opts.retryIf(err)) throw err;
      let delay = backoff.next();
      if (opts.maxDelayMs) delay = Math.max(0, Math.min(delay, opts.maxDelayMs()));
      opts.onError?.(err, delay, failures);
      await (opts.wait ? opts.wait(delay, signal) : pauseOn(clock, delay, signal, wake));
    }
  }
}
