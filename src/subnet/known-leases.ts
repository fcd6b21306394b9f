// The remote leases this node knows, and the differences (added/removed events) that listings and
// watched changes make to them. Every lease is checked here before a backend can see it: one that
// names our own addresses, lies outside the network or has the wrong size is refused, alone, with
// a reason that is logged once per change of its key and counted by reason.
//
// Two keys may claim the same addresses (e.g. `a-24` and `a-24&b-64`, or two dual-stack keys sharing
// an IPv6 subnet): the older key — lower createRevision, then the lower key name — is used and the
// other refused, the same on every node whatever order the keys arrived in. Since every usable key
// has the network's subnet lengths, keys overlap only by naming the same subnet, which two maps find.
import type { Logger } from '../common/log.js';
import { leaseMetrics } from '../common/metrics.js';
import { printable } from '../common/printable.js';
import type { NetworkConfig } from './config.js';
import type { Ip4Net } from '../common/ip4.js';
import type { Ip6Net } from '../common/ip6.js';
import { type Lease, type LeaseEvent, sameLeaseAttrs } from './lease.js';
import { checkLeaseSubnet } from './lease-validation.js';
import { type InvalidLeaseKey, type LeaseChange, type LeaseListing, type LeaseRecord, sameSubnets } from './lease-store.js';

/** How many keys one aggregated warning names; the count says how many there are in all. */
const KEYS_PER_WARNING = 20;
/** Keys and reasons come from anyone who can write to etcd: escaped, and cut to this many characters. */
const KEY_CHARS = 160;

interface Refusal {
  code: string;
  reason: string;
}

interface OwnSubnets {
  subnet: Ip4Net;
  ipv6Subnet: Ip6Net | null;
}

type Refused = InvalidLeaseKey & { fresh: boolean };

/** Revisions are decimal strings without leading zeros: the shorter is the smaller, then compare the text. */
function compareRevisions(a: string, b: string): number {
  if (a.length !== b.length) return a.length - b.length;
  return a < b ? -1 : a > b ? 1 : 0;
}

function olderFirst(a: LeaseRecord, b: LeaseRecord): number {
  return compareRevisions(a.createRevision, b.createRevision) || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
}

export class KnownLeases {
  /** Every well-formed remote key, by whole key: refused or used, decided on each recompute. */
  private readonly records = new Map<string, LeaseRecord>();
  /** Keys whose name or value cannot be used, by whole key. */
  private readonly invalid = new Map<string, InvalidLeaseKey>();
  /** The leases handed to the backend, by IPv4 subnet. */
  private readonly leases = new Map<string, Lease>();
  /** Which IPv4 subnet's lease each key holds. */
  private readonly heldBy = new Map<string, string>();
  /** Refused keys → the revision at which they were last reported, so each version is reported once. */
  private readonly refused = new Map<string, string>();
  private own: OwnSubnets | null = null;
  /** Refusals counted since start, by reason (also exported as flannel_leases_invalid_total). */
  readonly refusedByReason = new Map<string, number>();

  constructor(
    private readonly network: NetworkConfig,
    private readonly log: Logger,
  ) {}

  get size(): number {
    return this.leases.size;
  }

  /** The leases handed to the backend now. */
  snapshot(): Lease[] {
    return [...this.leases.values()];
  }

  /** Our own subnets: never a remote lease, and nothing overlapping them may be routed away. */
  setOwn(subnet: Ip4Net, ipv6Subnet: Ip6Net | null = null): void {
    this.own = { subnet, ipv6Subnet };
  }

  /** Why a well-formed remote lease cannot be used on its own merits, or null. */
  private refusal(r: LeaseRecord): Refusal | null {
    const own = this.own;
    const v6 = this.network.ipv6 ? (r.ipv6Subnet ?? null) : null;
    // Checked first: a key such as <our net>-23 or -25 claims our pods' addresses, and its warning says so.
    if (own && r.subnet.overlaps(own.subnet)) return { code: 'overlap', reason: `overlaps our own subnet ${own.subnet}` };
    if (own?.ipv6Subnet && v6?.overlaps(own.ipv6Subnet)) return { code: 'overlap', reason: `overlaps our own IPv6 subnet ${own.ipv6Subnet}` };
    const problem = checkLeaseSubnet(r.subnet, this.network);
    if (problem) return { code: problem.reason, reason: problem.detail };
    const ipv6 = this.network.ipv6;
    if (ipv6 && v6) {
      if (!ipv6.network.covers(v6)) return { code: 'outside_network', reason: `IPv6 subnet ${v6} is outside the IPv6 network ${ipv6.network}` };
      if (v6.prefixLen !== ipv6.subnetLen) {
        return { code: 'wrong_prefix_len', reason: `IPv6 prefix length ${v6.prefixLen} is not the network's IPv6SubnetLen ${ipv6.subnetLen}` };
      }
    }
    return null;
  }

  /** Rebuilds the known set from a full listing and returns the differences as events. */
  replaceAll(listing: LeaseListing): LeaseEvent[] {
    this.records.clear();
    this.invalid.clear();
    this.claims.clear();
    for (const bad of listing.invalid) this.invalid.set(bad.key, bad);
    for (const r of listing.records) {
      this.records.set(r.key, r);
      this.index(r);
    }
    const { events, refused } = this.recompute();
    this.warnListing(refused);
    return events;
  }

  /**
   * Applies watched changes to keys other than our own and returns the events they make. A put that
   * is refused removes what the key held before, as a deletion does. Costs the size of the batch:
   * only when a change touches a subnet that two keys claim are all keys decided again, so that the
   * older-key rule holds whatever the order of arrival.
   */
  apply(changes: readonly LeaseChange[]): LeaseEvent[] {
    const touched = new Set<string>();
    let contested = false;
    for (const change of changes) {
      const key = change.type === 'put' ? change.record.key : change.key;
      const old = this.records.get(key);
      if (old) contested = this.unindex(old) || contested;
      if (change.type === 'delete') {
        this.records.delete(key);
        this.invalid.delete(key);
      } else if (change.type === 'invalid') {
        this.records.delete(key);
        const { type: _type, revision: _revision, ...bad } = change;
        this.invalid.set(key, bad);
      } else {
        this.invalid.delete(key);
        this.records.set(key, change.record);
        contested = this.index(change.record) || contested;
      }
      touched.add(key);
    }
    const { events, refused } = contested ? this.recompute() : this.decide(touched);
    for (const bad of refused) if (bad.fresh) this.refuseOne(bad);
    leaseMetrics.remote.set(this.leases.size);
    return events;
  }

  /** Subnets → the keys claiming them (well-formed keys, used or refused), to find contested subnets. */
  private readonly claims = new Map<string, Set<string>>();

  private claimKeys(r: LeaseRecord): string[] {
    const v6 = this.network.ipv6 ? (r.ipv6Subnet ?? null) : null;
    return v6 ? [r.subnet.toKey(), `6/${v6.toKey()}`] : [r.subnet.toKey()];
  }

  /** Adds a record's claims; true when one of its subnets is now claimed by another key too. */
  private index(r: LeaseRecord): boolean {
    let contested = false;
    for (const c of this.claimKeys(r)) {
      const set = this.claims.get(c) ?? new Set<string>();
      set.add(r.key);
      this.claims.set(c, set);
      if (set.size > 1) contested = true;
    }
    return contested;
  }

  /** Removes a record's claims; true when another key claimed one of its subnets too. */
  private unindex(r: LeaseRecord): boolean {
    let contested = false;
    for (const c of this.claimKeys(r)) {
      const set = this.claims.get(c);
      if (!set) continue;
      if (set.size > 1) contested = true;
      set.delete(r.key);
      if (set.size === 0) this.claims.delete(c);
    }
    return contested;
  }

  /** The keys of one batch decided on their own merits (no subnet they name is contested). */
  private decide(keys: ReadonlySet<string>): { events: LeaseEvent[]; refused: Refused[] } {
    const events: LeaseEvent[] = [];
    const refused: Refused[] = [];
    for (const key of keys) {
      const r = this.records.get(key);
      const bad = this.invalid.get(key);
      const why = r && !bad ? this.refusal(r) : null;
      const usable = r !== undefined && !bad && !why && !(this.own && sameSubnets(r, this.own));
      // What the key held before goes, unless it holds the same subnet still (its value may have changed).
      const held = this.heldBy.get(key);
      if (held !== undefined && (!usable || r.subnet.toKey() !== held)) {
        const lease = this.leases.get(held);
        this.leases.delete(held);
        this.heldBy.delete(key);
        if (lease) events.push({ type: 'removed', lease });
      }
      const refusal = bad ?? (r && why ? this.refusedRecord(r, why) : null);
      if (refusal) {
        refused.push({ ...refusal, fresh: this.noteRefused(refusal) });
        continue;
      }
      this.refused.delete(key);
      if (!usable) continue; // deleted, or our own key
      const lease = this.leaseOf(r);
      const subnetKey = r.subnet.toKey();
      const prev = this.leases.get(subnetKey);
      this.leases.set(subnetKey, lease);
      this.heldBy.set(key, subnetKey);
      if (!prev || !sameLeaseAttrs(prev.attrs, lease.attrs) || !sameSubnets(prev, lease)) events.push({ type: 'added', lease });
    }
    return { events, refused };
  }

  private leaseOf(r: LeaseRecord): Lease {
    const v6 = this.network.ipv6 ? (r.ipv6Subnet ?? null) : null;
    return { subnet: r.subnet, ...(v6 ? { ipv6Subnet: v6 } : {}), attrs: r.attrs, expiration: null };
  }

  /**
   * After setOwn moved us to a subnet still known as a peer's: re-decides every key (the own-subnet rule
   * now refuses that peer) and returns the events. The argument is kept for callers; setOwn decides.
   */
  forget(_subnet: Ip4Net): LeaseEvent[] {
    const { events, refused } = this.recompute();
    for (const bad of refused) if (bad.fresh) this.refuseOne(bad);
    return events;
  }

  /**
   * Decides which keys are used (linear in keys, plus one sort), updates the lease map, and returns
   * the events and every refused key (`fresh` when this version of it was not reported before).
   */
  private recompute(): { events: LeaseEvent[]; refused: Refused[] } {
    const refused: Refused[] = [];
    const refuse = (bad: InvalidLeaseKey) => refused.push({ ...bad, fresh: this.noteRefused(bad) });
    for (const bad of this.invalid.values()) refuse(bad);

    const usable: LeaseRecord[] = [];
    for (const r of this.records.values()) {
      if (this.own && sameSubnets(r, this.own)) continue; // our own key
      const why = this.refusal(r);
      if (why) refuse(this.refusedRecord(r, why));
      else usable.push(r);
    }
    // Order matters only where two keys claim the same subnet; in the usual network none do.
    if ([...this.claims.values()].some((keys) => keys.size > 1)) usable.sort(olderFirst);
    const by4 = new Map<string, LeaseRecord>();
    const by6 = new Map<string, LeaseRecord>();
    const next = new Map<string, Lease>();
    for (const r of usable) {
      const v6 = this.network.ipv6 ? (r.ipv6Subnet ?? null) : null;
      const older = by4.get(r.subnet.toKey()) ?? (v6 ? by6.get(v6.toKey()) : undefined);
      if (older) {
        refuse(this.refusedRecord(r, { code: 'overlap_older_lease', reason: `claims addresses of the older key ${older.key}` }));
        continue;
      }
      by4.set(r.subnet.toKey(), r);
      if (v6) by6.set(v6.toKey(), r);
      next.set(r.subnet.toKey(), this.leaseOf(r));
    }
    const stillRefused = new Set(refused.map((r) => r.key));
    for (const key of [...this.refused.keys()]) if (!stillRefused.has(key)) this.refused.delete(key);

    const events: LeaseEvent[] = [];
    for (const [key, lease] of this.leases) if (!next.has(key)) events.push({ type: 'removed', lease });
    for (const [key, lease] of next) {
      const prev = this.leases.get(key);
      if (!prev || !sameLeaseAttrs(prev.attrs, lease.attrs) || !sameSubnets(prev, lease)) events.push({ type: 'added', lease });
    }
    this.leases.clear();
    this.heldBy.clear();
    for (const [key, lease] of next) this.leases.set(key, lease);
    for (const r of by4.values()) this.heldBy.set(r.key, r.subnet.toKey());
    leaseMetrics.remote.set(this.leases.size);
    return { events, refused };
  }

  private refusedRecord(r: LeaseRecord, why: Refusal): InvalidLeaseKey {
    return { key: r.key, code: why.code, reason: why.reason, subnet: r.subnet, ipv6Subnet: r.ipv6Subnet ?? null, modRevision: r.modRevision };
  }

  /** Records a refused key version; true when this version is new (so it is counted and reported). */
  private noteRefused(bad: InvalidLeaseKey): boolean {
    const version = `${bad.modRevision}/${bad.code}`;
    if (this.refused.get(bad.key) === version) return false;
    this.refused.set(bad.key, version);
    this.refusedByReason.set(bad.code, (this.refusedByReason.get(bad.code) ?? 0) + 1);
    leaseMetrics.invalid.inc({ reason: bad.code });
    return true;
  }

  /** A watched key that changed into something refused (already noted as fresh): one line for it. */
  private refuseOne(bad: InvalidLeaseKey): void {
    const fields = {
      key: printable(bad.key, KEY_CHARS),
      subnet: bad.subnet?.toString() ?? null,
      ...(bad.ipv6Subnet ? { ipv6Subnet: bad.ipv6Subnet.toString() } : {}),
      code: bad.code,
      reason: printable(bad.reason, KEY_CHARS),
    };
    const msg =
      bad.code === 'overlap' ? 'skipping a lease that overlaps our own subnet'
      : bad.code === 'overlap_older_lease' ? 'skipping a lease that claims the addresses of an older lease'
      : 'skipping a malformed or invalid lease';
    this.log.warn(fields, msg);
  }

  /** One line per listing for what it refused anew, however many keys; nothing when all were seen before. */
  private warnListing(refused: readonly Refused[]): void {
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
