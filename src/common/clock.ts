// Time as a dependency: the lease manager and the in-memory lease store take a Clock, so their
// renewal, expiry and retry logic can be tested in milliseconds with a clock the test moves.

export interface TimerHandle {
  /** Lets the process exit while the timer is pending (Node's unref). */
  unref?(): void;
}

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

/** setTimeout's longest delay (2^31 - 1 ms, about 24.8 days); a longer one fires at once. */
export const MAX_TIMER_MS = 2_147_483_647;

