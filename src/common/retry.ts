// The one retry policy: a delay that starts small and doubles up to a cap, reset by success.
// Callers own the wait itself (a plain timer, or a pause that ends early when etcd comes back).

/** Retry policy for etcd work: 0.5 s doubling up to 30 s. */
export const RETRY_MIN_MS = 500;
export const RETRY_MAX_MS = 30_000;

export class Backoff {
  private current: number;

  constructor(
    private readonly minMs = RETRY_MIN_MS,
    private readonly maxMs = RETRY_MAX_MS,
  ) {
    this.current = minMs;
  }

  /** The delay to wait now; the next call returns twice as much, up to the cap. */
  next(): number {
    const delay = this.current;
    this.current = Math.min(this.current * 2, this.maxMs);
    return delay;
  }

  /** The delay the next call to next() will return, without advancing. */
  peek(): number {
    return this.current;
  }

  reset(): void {
    this.current = this.minMs;
  }
}

/**
 * Calls `attempt` until it succeeds or `stopped()` turns true, waiting with `wait(delay)` after each
 * failure (`onError` sees the error and the delay first). Returns the result, or undefined when stopped.
 */
export async function retryUntil<T>(
  attempt: () => Promise<T>,
  opts: {
    stopped: () => boolean;
    wait: (ms: number) => Promise<void>;
    onError: (err: unknown, retryInMs: number) => void;
    backoff?: Backoff;
  },
): Promise<T | undefined> {
  const backoff = opts.backoff ?? new Backoff();
  while (!opts.stopped()) {
    try {
      return await attempt();
    } catch (err) {
      const delay = backoff.next();
      opts.onError(err, delay);
      await opts.wait(delay);
    }
  }
  return undefined;
}
