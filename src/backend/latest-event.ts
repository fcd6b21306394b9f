// Lease events for one peer may overlap when handling one waits for a lookup (`ip route get` for an
// on-link check): the event begun last decides, and an older one that finishes later is dropped.
export class LatestEvent {
  private seq = 0;
  private readonly latest = new Map<string, number>();

  /** An event for `key` begins; returns its ticket. */
  begin(key: string): number {
    const ticket = ++this.seq;
    this.latest.set(key, ticket);
    return ticket;
  }

  /** Whether no event for `key` has begun since `ticket`'s. */
  isLatest(key: string, ticket: number): boolean {
    return this.latest.get(key) === ticket;
  }

  /** `key` is gone (its peer removed): any event still in flight for it is stale. */
  forget(key: string): void {
    this.latest.delete(key);
  }
}
