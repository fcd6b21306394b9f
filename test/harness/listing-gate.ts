// Nodes that start at the same instant each choose a subnet from a listing that lacks the others'
// new keys. A ListingGate makes that happen on purpose: the next `n` listings of the stores it holds
// (the in-memory store, or real etcd registries) wait for one another, so that `n` lease managers all
// choose before any of them creates its key. They then go on in the order they listed, right after
// `onOpen` (another writer's key landing between their listings and their creates, say).
import type { LeaseListing } from '../../src/subnet/lease-store.js';

export class ListingGate {
  private waiting: (() => void)[] = [];

  constructor(
    private left: number,
    private readonly onOpen: () => void = () => undefined,
  ) {}

  /** Routes `store`'s listings through the gate (only the next `n` in all wait; later ones pass). */
  hold(store: { listLeases(): Promise<LeaseListing> }): void {
    const list = store.listLeases.bind(store);
    store.listLeases = async () => {
      const listing = await list();
      if (this.left <= 0) return listing;
      this.left--;
      await new Promise<void>((resolve) => {
        this.waiting.push(resolve);
        if (this.left > 0) return;
        this.onOpen();
        for (const release of this.waiting.splice(0)) release();
      });
      return listing;
    };
  }
}
