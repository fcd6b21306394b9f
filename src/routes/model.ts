// The reconciler's picture of the kernel tables: the entries each owner wants (a backend's owner is a
// peer, keyed by its subnet), and the entries we believe are programmed. Changing an owner's entries
// marks the table keys it touches; a plan compares only those keys, so an event costs the same at 10
// peers as at 5,000. A full reconcile replaces the programmed side with what the kernel holds and
// compares every key once — Map lookups, linear in the table sizes. No I/O here: the reconciler runs
// the plans (reconciler.ts).
import { type EntryKind, type Family, type ReconciledEntry, type KernelOp, entryFamily, sameEntry } from './entries.js';

/**
 * Owners wanting one key. Usually one; when several want it (two leases naming one VtepMAC), the owner
 * with the lowest key wins — a rule every node applies alike, so all nodes program the same entry.
 */
interface Claim {
  owner: string;
  entry: ReconciledEntry;
  /** Every owner and what it wants, once a second owner has claimed the key. */
  contested: Map<string, ReconciledEntry> | null;
  /** The last reset that found the key in the kernel. */
  seen: number;
}

/** The apply order, one rank per (kind, action): see plan(). */
const RANK: Record<`${EntryKind} ${KernelOp['action']}`, number> = {
  'fdb delete': 0,
  'fdb replace': 1,
  'wgdev delete': 2,
  'wgdev replace': 3,
  'wgpeer delete': 4,
  'route delete': 5,
  'neigh delete': 6,
  'neigh replace': 7,
  'wgpeer replace': 8,
  'route replace': 9,
};
const RANKS = 10;

const KINDS: readonly EntryKind[] = ['route', 'neigh', 'fdb', 'wgpeer', 'wgdev'];

/** An entry's place in the counts: its kind, and its family. */
function slot(e: ReconciledEntry): number {
  return KINDS.indexOf(e.kind) + (entryFamily(e) === 6 ? KINDS.length : 0);
}

export class KernelModel {
  private readonly claims = new Map<string, Claim>();
  private readonly byOwner = new Map<string, readonly ReconciledEntry[]>();
  /** What we believe the kernel holds, by key: what it held at the last full pass, plus what we changed since. */
  private readonly programmed = new Map<string, ReconciledEntry>();
  private readonly dirty = new Set<string>();
  /** Programmed entries by kind and family (slot()), kept as they change (for gauges). */
  private readonly counts: number[] = new Array<number>(KINDS.length * 2).fill(0);
  /** Bumped by every change to what is wanted. */
  version = 0;
  private resets = 0;

  /** Owners that want entries. */
  get owners(): number {
    return this.byOwner.size;
  }

  hasOwner(owner: string): boolean {
    return this.byOwner.has(owner);
  }

  /** Keys waiting for a plan. */
  get pending(): number {
    return this.dirty.size;
  }

  /** Programmed entries of one kind (and family). */
  programmedCount(kind: EntryKind, family?: Family): number {
    const k = KINDS.indexOf(kind);
    if (family !== undefined) return this.counts[k + (family === 6 ? KINDS.length : 0)]!;
    return this.counts[k]! + this.counts[k + KINDS.length]!;
  }

  /** The programmed entry of a key (tests, logs). */
  programmedEntry(key: string): ReconciledEntry | undefined {
    return this.programmed.get(key);
  }

  /** Every programmed entry. */
  programmedEntries(): IterableIterator<ReconciledEntry> {
    return this.programmed.values();
  }

  /**
   * Sets what `owner` wants (replacing what it wanted before). Returns false when that is what it
   * already wanted: nothing is marked then.
   */
  set(owner: string, entries: readonly ReconciledEntry[]): boolean {
    const old = this.byOwner.get(owner);
    if (old && sameEntries(old, entries)) return false;
    if (old) for (const e of old) this.release(e.key, owner);
    if (entries.length === 0) this.byOwner.delete(owner);
    else this.byOwner.set(owner, entries);
    for (const e of entries) this.claim(e, owner);
    this.version++;
    return true;
  }

  /** Drops everything `owner` wanted; returns whether it wanted anything. */
  delete(owner: string): boolean {
    const old = this.byOwner.get(owner);
    if (!old) return false;
    this.byOwner.delete(owner);
    for (const e of old) this.release(e.key, owner);
    this.version++;
    return true;
  }

  private claim(e: ReconciledEntry, owner: string): void {
    this.dirty.add(e.key);
    const c = this.claims.get(e.key);
    if (!c) {
      this.claims.set(e.key, { owner, entry: e, contested: null, seen: 0 });
      return;
    }
    c.contested ??= new Map([[c.owner, c.entry]]);
    c.contested.set(owner, e);
    if (owner < c.owner) {
      c.owner = owner;
      c.entry = e;
    }
  }

  private release(key: string, owner: string): void {
    this.dirty.add(key);
    const c = this.claims.get(key);
    if (!c) return;
    if (!c.contested) {
      if (c.owner === owner) this.claims.delete(key);
      return;
    }
    c.contested.delete(owner);
    if (c.contested.size === 0) {
      this.claims.delete(key);
      return;
    }
    if (c.owner === owner) {
      let best: string | undefined;
      for (const o of c.contested.keys()) if (best === undefined || o < best) best = o;
      c.owner = best!;
      c.entry = c.contested.get(best!)!;
    }
    if (c.contested.size === 1) c.contested = null;
  }

  /**
   * The kernel changes for every marked key, in a safe order: FDB first (deletions, then
   * replacements), then WireGuard devices' settings and peer deletions, route deletions, neighbour
   * deletions, neighbour replacements, WireGuard peer replacements, and route replacements last — a
   * route never points at a next hop (or into a tunnel) that cannot be resolved and delivered.
   * Clears the marks; the caller reports each op the kernel accepted with `applied`.
   */
  plan(): KernelOp[] {
    const buckets: KernelOp[][] = Array.from({ length: RANKS }, () => []);
    for (const key of this.dirty) {
      const want = this.claims.get(key);
      const have = this.programmed.get(key);
      if (want && have && sameEntry(want.entry, have)) continue;
      if (want) buckets[RANK[`${want.entry.kind} replace`]]!.push({ action: 'replace', entry: want.entry, owner: want.owner });
      else if (have) buckets[RANK[`${have.kind} delete`]]!.push({ action: 'delete', entry: have, owner: null });
    }
    this.dirty.clear();
    return buckets.flat();
  }

  /** Records an op the kernel accepted. A refused op changes nothing: the next full pass plans it again. */
  applied(op: KernelOp): void {
    const { key } = op.entry;
    if (op.action === 'replace') this.setProgrammed(key, op.entry);
    else if (this.programmed.get(key) === op.entry) this.unsetProgrammed(key);
  }

  /**
   * Takes what the kernel holds as the programmed side and marks every key that differs from what is
   * wanted, so that the next plan repairs it. Entries nobody wants are kept (to be deleted) only when
   * `owns` says they are ours. An FDB key the kernel holds more than once (one MAC, several
   * destinations) keeps the wanted destination; the others that are ours are returned as deletions,
   * to run first.
   */
  resetFromKernel<E extends ReconciledEntry>(entries: Iterable<E>, owns: (e: E) => boolean): KernelOp[] {
    const { programmed, claims, counts, dirty } = this;
    const reset = ++this.resets;
    programmed.clear();
    counts.fill(0);
    const extra: KernelOp[] = [];
    // One Map lookup for a wanted key the kernel holds once (the common case); a key that differs from
    // what is wanted is marked as it goes.
    for (const e of entries) {
      const c = claims.get(e.key);
      if (c && c.seen !== reset) {
        c.seen = reset;
        programmed.set(e.key, e);
        counts[slot(e)]!++;
        if (!sameEntry(c.entry, e)) dirty.add(e.key);
        continue;
      }
      if (!c && !owns(e)) continue;
      const seen = programmed.get(e.key);
      if (!seen) {
        // Ours, and nobody wants it: the plan deletes it.
        programmed.set(e.key, e);
        counts[slot(e)]!++;
        dirty.add(e.key);
        continue;
      }
      // A key seen twice: keep the entry that is wanted.
      let drop: ReconciledEntry = e;
      if (c && sameEntry(c.entry, e) && !sameEntry(c.entry, seen)) {
        this.setProgrammed(e.key, e);
        drop = seen;
      }
      // (Both are of this listing: the programmed side was cleared above.)
      if (drop.kind === 'fdb' && owns(drop as E)) extra.push({ action: 'delete', entry: drop, owner: null });
    }
    // Wanted keys the kernel does not hold at all.
    claims.forEach((c, key) => {
      if (c.seen !== reset) dirty.add(key);
    });
    return extra;
  }

  private setProgrammed(key: string, e: ReconciledEntry): void {
    const old = this.programmed.get(key);
    if (old) this.count(old, -1);
    this.programmed.set(key, e);
    this.count(e, 1);
  }

  private unsetProgrammed(key: string): void {
    const old = this.programmed.get(key);
    if (!old) return;
    this.programmed.delete(key);
    this.count(old, -1);
  }

  private count(e: ReconciledEntry, by: number): void {
    this.counts[slot(e)]! += by;
  }
}

function sameEntries(a: readonly ReconciledEntry[], b: readonly ReconciledEntry[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i]!.key !== b[i]!.key || !sameEntry(a[i]!, b[i]!)) return false;
  return true;
}
