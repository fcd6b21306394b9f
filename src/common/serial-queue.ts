// Runs async tasks one at a time, in order. Used wherever kernel or etcd work must never interleave
// (the lease manager, each backend, the iptables rules).

export class SerialQueue {
  private tail: Promise<void> = Promise.resolve();

  /**
   * Queues `task` after everything queued before it and resolves or rejects with its own outcome.
   * A failed task never blocks the ones after it.
   */
  run<T>(task: () => Promise<T>): Promise<T> {
    const result = this.tail.then(task);
    this.tail = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }

  /** Resolves once every task queued so far has finished (whatever their outcome). */
  idle(): Promise<void> {
    return this.tail;
  }
}
