// The remote leases this node knows, and the differences (added/removed events) that listings and
// watched changes make to them. Every lease is checked here before a backend can see it: one that
// names our own addresses, lies outside the network or has the wrong size is refused, alone, with
// a reason that is logged once per change of its key and counted by reason.
import type { Logger } from '../common/log.js';
import { leaseMetrics } from '../common/metrics.js';
import { printable } from '../common/printable.js';
import type { NetworkConfig } from './config.js';
import type { Ip4Net } from './ip4.js';
import { type Lease, type LeaseEvent, sameAttrs } from './lease.js';
import { checkLeaseSubnet } from './lease-validation.js';
import type { InvalidLeaseKey, LeaseChange, LeaseListing, LeaseRecord } from './lease-store.js';

/** How many keys one aggregated warning names; the count says how many there are in all. */
const KEYS_PER_WARNING = 20;
/** Keys and reasons come from anyone who can write to etcd: escaped, and cut to this many characters. */
const KEY_CHARS = 160;

interface Refusal {
  code: string;
  reason: string;
}

export class KnownLeases {
  private readonly leases = new Map<string, Lease>();
  /** Refused keys → the revision at which they were last reported, so each version is reported once. */
  private readonly refused = new Map<string, string>();
  private own: Ip4Net | null = null;
  /** Refusals counted since start, by reason (also exported as flannel_leases_invalid_total). */
  readonly refusedByReason = new Map<string, number>();

  constructor(
    private readonly network: NetworkConfig,
    private readonly log: Logger,
  ) {}

  get size(): number {
    return this.leases.size;
  }

  /** Our own subnet: never a remote lease, and nothing overlapping it may be routed away. */
  setOwn(subnet: Ip4Net): void {
    this.own = subnet;
  }

  /** Why a well-formed remote lease cannot be used, or null. */
  private refusal(subnet: Ip4Net): Refusal | null {
    // Checked first: a key such as <our net>-23 or -25 claims our pods' addresses, and its warning says so.
    if (this.own && subnet.overlaps(this.own)) {
      return { code: 'overlap', reason: `overlaps our own subnet ${this.own}` };
    }
    const problem = checkLeaseSubnet(subnet, this.network);
    return problem ? { code: problem.reason, reason: problem.detail } : null;
  }

  /** Rebuilds the known set from a full listing and returns the differences as events. */
  replaceAll(listing: LeaseListing): LeaseEvent[] {
    const next = new Map<string, Lease>();
    const refusedNow: (InvalidLeaseKey & { fresh: boolean })[] = [];
    const stillRefused = new Set<string>();
    const refuse = (bad: InvalidLeaseKey) => {
      stillRefused.add(bad.key);
      refusedNow.push({ ...bad, fresh: this.noteRefused(bad) });
    };
    for (const bad of listing.invalid) refuse(bad);
    for (const r of listing.records) {
      if (this.own && r.subnet.equals(this.own)) continue;
      const why = this.refusal(r.subnet);
      if (why) refuse(this.refusedRecord(r, why));
      else next.set(r.subnet.toKey(), { subnet: r.subnet, attrs: r.attrs, expiration: null });
    }
    for (const key of [...this.refused.keys()]) if (!stillRefused.has(key)) this.refused.delete(key);
    this.warnListing(refusedNow);

    const events: LeaseEvent[] = [];
    for (const [key, lease] of this.leases) if (!next.has(key)) events.push({ type: 'removed', lease });
    for (const [key, lease] of next) {
      const prev = this.leases.get(key);
      if (!prev || !sameAttrs(prev.attrs, lease.attrs)) events.push({ type: 'added', lease });
    }
    this.leases.clear();
    for (const [key, lease] of next) this.leases.set(key, lease);
    leaseMetrics.remote.set(this.leases.size);
    return events;
  }

  /**
   * Applies watched changes to keys other than our own and returns the events they make. A put that
   * is refused removes what the key held before, as a deletion does.
   */
  apply(changes: readonly LeaseChange[]): LeaseEvent[] {
    const events: LeaseEvent[] = [];
    for (const change of changes) {
      if (change.type === 'delete') {
        this.refused.delete(change.key);
        if (change.subnet) this.forgetInto(change.subnet, events);
        continue;
      }
      if (change.type === 'invalid') {
        this.refuseOne(change);
        if (change.subnet) this.forgetInto(change.subnet, events);
        continue;
      }
      const { record } = change;
      const why = this.refusal(record.subnet);
      if (why) {
        this.refuseOne(this.refusedRecord(record, why));
        this.forgetInto(record.subnet, events);
        continue;
      }
      this.refused.delete(record.key);
      const key = record.subnet.toKey();
      const prev = this.leases.get(key);
      if (prev && sameAttrs(prev.attrs, record.attrs)) continue;
      const lease: Lease = { subnet: record.subnet, attrs: record.attrs, expiration: null };
      this.leases.set(key, lease);
      events.push({ type: 'added', lease });
    }
    leaseMetrics.remote.set(this.leases.size);
    return events;
  }

  /** Drops a subnet (e.g. one that became ours); the event, if it was known. */
  forget(subnet: Ip4Net): LeaseEvent[] {
    const events: LeaseEvent[] = [];
    this.forgetInto(subnet, events);
    leaseMetrics.remote.set(this.leases.size);
    return events;
  }

  private forgetInto(subnet: Ip4Net, events: LeaseEvent[]): void {
    const key = subnet.toKey();
    const lease = this.leases.get(key);
    if (!lease) return;
    this.leases.delete(key);
    events.push({ type: 'removed', lease });
  }

  private refusedRecord(r: LeaseRecord, why: Refusal): InvalidLeaseKey {
    return { key: r.key, code: why.code, reason: why.reason, subnet: r.subnet, modRevision: r.modRevision };
  }

  /** Records a refused key version; true when this version is new (so it is counted and reported). */
  private noteRefused(bad: InvalidLeaseKey): boolean {
    if (this.refused.get(bad.key) === bad.modRevision) return false;
    this.refused.set(bad.key, bad.modRevision);
    this.refusedByReason.set(bad.code, (this.refusedByReason.get(bad.code) ?? 0) + 1);
    leaseMetrics.invalid.inc({ reason: bad.code });
    return true;
  }

  /** A watched key that changed into something refused: one line for it. */
  private refuseOne(bad: InvalidLeaseKey): void {
    if (!this.noteRefused(bad)) return;
    const fields = { key: printable(bad.key, KEY_CHARS), subnet: bad.subnet?.toString() ?? null, code: bad.code, reason: printable(bad.reason, KEY_CHARS) };
    this.log.warn(fields, bad.code === 'overlap' ? 'skipping a lease that overlaps our own subnet' : 'skipping a malformed or invalid lease');
  }

  /** One line per listing for what it refused anew, however many keys; nothing when all were seen before. */
  private warnListing(refused: readonly (InvalidLeaseKey & { fresh: boolean })[]): void {
    const fresh = refused.filter((r) => r.fresh);
    if (fresh.length === 0) return;
    const byReason: Record<string, number> = {};
    for (const r of refused) byReason[r.code] = (byReason[r.code] ?? 0) + 1;
    const overlapsOwn = fresh.some((r) => r.code === 'overlap');
    this.log.warn(
      {
        invalid: refused.length,
        newlyInvalid: fresh.length,
        byReason,
        keys: fresh.slice(0, KEYS_PER_WARNING).map((r) => ({ key: printable(r.key, KEY_CHARS), code: r.code, reason: printable(r.reason, KEY_CHARS) })),
      },
      overlapsOwn ? 'skipping malformed or invalid leases (some overlap our own subnet)' : 'skipping malformed or invalid leases',
    );
  }
}
