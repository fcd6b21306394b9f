// The one way the daemon schedules work that brings something up to date — the kernel tables, the
// udp forwarder's table, the masquerade rules: a pass that runs at most once at a time, requests made
// while one runs share the next pass, a periodic pass repairs what others changed, work that must not
// interleave with passes runs between them (exclusive), and an AbortSignal stops it all. `every` is
// the periodic primitive underneath, for timers that need no coalescing.
import { abortReason, pause } from './retry.js';

/**
 * Runs `task` every `intervalMs` until `signal` is aborted. Runs never overlap: the next is timed from
 * the end of the previous one. A failure goes to `onError` and the schedule carries on. The timer never
 * keeps the process alive.
 */
export function every(
  intervalMs: number,
  task: () => unknown,
  opts: { signal: AbortSignal; onError?: (err: unknown) => void },
): void {
  const { signal } = opts;
  if (!(intervalMs > 0) || signal.aborted) return;
  let timer: NodeJS.Timeout | undefined;
  const schedule = (): void => {
    if (signal.aborted) return;
    timer = setTimeout(run, intervalMs);
    timer.unref();
  };
  const run = async (): Promise<void> => {
    try {
      await task();
    } catch (err) {
      opts.onError?.(err);
    }
    schedule();
  };
  signal.addEventListener('abort', () => clearTimeout(timer), { once: true });
  schedule();
}

export interface SchedulerOptions<R extends string> {
  /** Brings the thing up to date. Gets every reason requested since the previous pass began. */
  pass: (reasons: ReadonlySet<R>, signal: AbortSignal) => Promise<void>;
  /** A failed pass is reported here, never thrown at callers: the next request or periodic pass retries. */
  onError: (err: unknown, reasons: ReadonlySet<R>) => void;
  /** Aborting it stops the periodic pass and any pass not yet started; a running pass sees it too. */
  signal: AbortSignal;
  /** A pass with `reason` every `intervalMs`, from startPeriodic() on (0 disables). */
  periodic?: { intervalMs: number; reason: R };
  /**
   * After a pass that took c ms, the next one starts no sooner than `spacing` × c ms after it ended, so
   * that a stream of requests costs at most 1 / (1 + spacing) of the time in passes. Default 0.
   */
  spacing?: number;
}

export class Scheduler<R extends string> {
  private running: Promise<void> | null = null;
  private pending = new Set<R>();
  /** Work that runs between passes (exclusive()), in order. */
  private tasks: { run: () => Promise<void>; cancel: (reason: unknown) => void }[] = [];
  /** Resolvers of the requests the next pass serves. */
  private waiters: (() => void)[] = [];
  private lastEnd = -Infinity;
  private lastCost = 0;
  private periodicStarted = false;
  /** Passes run so far (for stats). */
  passes = 0;

  constructor(private readonly opts: SchedulerOptions<R>) {}

  /**
   * Asks for a pass with `reason`. Requests made in the same turn of the event loop, or while a pass
   * runs, share one pass. Resolves once a pass that began after this call has ended (whatever its
   * outcome), or at once when stopped.
   */
  request(reason: R): Promise<void> {
    if (this.opts.signal.aborted) return Promise.resolve();
    this.pending.add(reason);
    const served = new Promise<void>((resolve) => this.waiters.push(resolve));
    this.running ??= this.drain();
    return served;
  }

  /**
   * Runs `task` when no pass runs, and starts no pass before it ends; resolves or rejects with the
   * task's own outcome (unlike a pass, whose failures go to onError). For work that must not interleave
   * with passes but whose caller needs the result, e.g. addressing a device for a new lease. Tasks run
   * in the order given, before the next pass. Rejects with the signal's reason once stopped.
   */
  exclusive<T>(task: () => Promise<T>): Promise<T> {
    if (this.opts.signal.aborted) return Promise.reject(abortReason(this.opts.signal));
    const result = new Promise<T>((resolve, reject) => {
      this.tasks.push({ run: () => task().then(resolve, reject), cancel: reject });
    });
    this.running ??= this.drain();
    return result;
  }

  /** Starts the periodic pass (idempotent). */
  startPeriodic(): void {
    const periodic = this.opts.periodic;
    if (this.periodicStarted || !periodic) return;
    this.periodicStarted = true;
    every(periodic.intervalMs, () => this.request(periodic.reason), { signal: this.opts.signal });
  }

  /** True while a pass runs or is waiting to start. */
  get busy(): boolean {
    return this.running !== null;
  }

  /** Resolves once no pass runs or waits to start. */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  private async drain(): Promise<void> {
    const { signal } = this.opts;
    try {
      while ((this.pending.size > 0 || this.tasks.length > 0) && !signal.aborted) {
        while (this.tasks.length > 0 && !signal.aborted) await this.tasks.shift()!.run();
        if (this.pending.size === 0 || signal.aborted) continue;
        // One turn at least, so that requests made in this turn join; more when passes must be spaced.
        const wait = this.lastEnd + (this.opts.spacing ?? 0) * this.lastCost - performance.now();
        if (wait > 0) await pause(wait, signal);
        else await new Promise<void>((resolve) => setImmediate(resolve));
        if (signal.aborted) break;
        const reasons = this.pending;
        const waiters = this.waiters;
        this.pending = new Set();
        this.waiters = [];
        const started = performance.now();
        try {
          await this.opts.pass(reasons, signal);
        } catch (err) {
          this.opts.onError(err, reasons);
        }
        this.passes++;
        this.lastEnd = performance.now();
        this.lastCost = this.lastEnd - started;
        for (const done of waiters) done();
      }
    } finally {
      this.running = null;
      // Stopped with requests waiting: they are answered, not left hanging.
      if (signal.aborted) {
        for (const done of this.waiters) done();
        this.waiters = [];
        this.pending.clear();
        for (const task of this.tasks.splice(0)) task.cancel(abortReason(signal));
      }
    }
  }
}
