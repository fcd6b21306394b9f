// A pass that brings something up to date (e.g. "make the kernel match the wanted routes"), run at most
// once at a time: requests made while a pass runs share one more pass after it, so a burst of requests
// costs two passes, not one each. A failed pass is reported to `onError` and never thrown at callers:
// the next request (or the periodic resync) tries again.

export class CoalescedPass<A> {
  private running: Promise<void> | null = null;
  /** The argument of the latest request not yet served; null when none is waiting. */
  private pending: { arg: A } | null = null;

  constructor(
    private readonly pass: (arg: A) => Promise<void>,
    private readonly onError: (err: unknown) => void,
  ) {}

  /** Resolves once a pass that started after this request has finished. */
  request(arg: A): Promise<void> {
    this.pending = { arg };
    if (this.running) return this.running;
    this.running = (async () => {
      while (this.pending) {
        const { arg: next } = this.pending;
        this.pending = null;
        try {
          await this.pass(next);
        } catch (err) {
          this.onError(err);
        }
      }
    })().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  /** Resolves when no pass is running. */
  idle(): Promise<void> {
    return this.running ?? Promise.resolve();
  }
}
