// The remote leases this node knows, and the differences (added/removed events) that listings and
// watched changes make to them. Every lease is checked here before a backend can see it: one that
// names our own addresses, lies outside the network or has the wrong size is refused, alone, with
// a reason: counted by reason once per change of its key, logged once per key and reason.
//
// Two keys may claim the same addresses (e.g. `a-24` and `a-24&b-64`, or two dual-stack keys sharing
// an IPv6 subnet), the same VTEP MAC or the same WireGuard public key (a cloned VM, a hostile writer):
// the older key — lower createRevision, then the lower key name — is used and the other refused, the
// same on every node whatever order the keys arrived in and whenever a node restarted, so that no
// backend ever sees two peers with one subnet, one MAC or one public key (WireGuard tells peers apart
// by their key alone). A lease carrying our own VTEP MAC, our own public key or our own PublicIP is
// refused too. Since every usable key has the network's subnet lengths, keys overlap only by naming the
// same subnet: an index from each claimed subnet, MAC and public key to the keys claiming it finds them. A change is decided with the keys it can affect
// only — those linked to it through shared claims — so a batch costs its own size however many keys
// there are, and a key that flaps under contest costs its claim group, not a pass over every key.
import type { Logger } from '../common/log.js';
import { leaseMetrics } from '../common/metrics.js';
import { printable } from '../common/printable.js';
import type { NetworkConfig } from './config.js';
import type { Ip4Net } from '../common/ip4.js';
import type { Ip6Net } from '../common/ip6.js';
import { type Lease, type LeaseAttrs, type LeaseEvent, sameLeaseAttrs } from './lease.js';
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

interface OwnLease {
  subnet: Ip4Net;
  ipv6Subnet: Ip6Net | null;
  /** What we publish: our VTEP MACs, our WireGuard public key and our PublicIP are nobody else's. */
  attrs: LeaseAttrs | null;
}

/**
 * Claim ids: a subnet is its key form (`a.b.c.d-len`, `6/<ipv6>-len`), a VTEP MAC `mac/…` or `mac6/…`,
 * a WireGuard public key `wgkey/…` (one claim for a node's key, which both of its devices use).
 */
const MAC_CLAIM = 'mac/';
const MAC6_CLAIM = 'mac6/';
const WG_KEY_CLAIM = 'wgkey/';

/** The distinct WireGuard public keys a lease carries (upstream's devices share one). */
function wireguardKeys(backend: LeaseAttrs['backend']): string[] {
  if (backend.type !== 'wireguard') return [];
  const keys = [backend.peer.publicKey];
  if (backend.peerV6 && backend.peerV6.publicKey !== backend.peer.publicKey) keys.push(backend.peerV6.publicKey);
  return keys;
}

/** A refused key, `fresh` when this version of it was not counted before, `tell` when its reason is news. */
type Refused = InvalidLeaseKey & { fresh: boolean; tell: boolean };

/** Revisions are decimal strings without leading zeros: the shorter is the smaller, then compare the text. */
function compareRevisions(a: string, b: string): number {
  if (a.length !== b.length) return a.length - b.length;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The older-key rule's order: lower createRevision, then the lower key. Also how a node tells that its own key is the newer claimant (contest.ts). */
export function olderFirst(a: Pick<LeaseRecord, 'key' | 'createRevision'>, b: Pick<LeaseRecord, 'key' | 'createRevision'>): number {
  return compareRevisions(a.createRevision, b.createRevision) || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
}

/** Why a key that lost `claim` to the older key `older` is refused. */
function lostClaim(claim: string, older: string): Refusal {
  if (claim.startsWith(MAC_CLAIM) || claim.startsWith(MAC6_CLAIM)) {
    return { code: 'duplicate_vtep_mac', reason: `VTEP MAC ${claim.slice(claim.indexOf('/') + 1)} belongs to the older key ${older}` };
  }
  if (claim.startsWith(WG_KEY_CLAIM)) {
    return { code: 'duplicate_public_key', reason: `WireGuard public key ${claim.slice(WG_KEY_CLAIM.length)} belongs to the older key ${older}` };
  }
  return { code: 'overlap_older_lease', reason: `claims addresses of the older key ${older}` };
}

export class KnownLeases {
  /** Every well-formed remote key, by whole key: used or refused. */
  private readonly records = new Map<string, LeaseRecord>();
  /** Keys whose name or value cannot be used, by whole key. */
  private readonly invalid = new Map<string, InvalidLeaseKey>();
  /**
   * Claimed subnets and VTEP MACs (see MAC_CLAIM) → the keys claiming them that pass their own checks: the
   * key itself while it is the only one (as nearly always), a set once several are.
   */
  private readonly claims = new Map<string, string | Set<string>>();
  /** The keys in `claims` → what each claims. */
  private readonly claimed = new Map<string, readonly string[]>();
  /** The leases handed to the backend, by IPv4 subnet. */
  private readonly leases = new Map<string, Lease>();
  /** Which IPv4 subnet's lease each key holds. */
  private readonly heldBy = new Map<string, string>();
  /** Refused keys → the version last counted (modRevision/reason) and the reason last logged. */
  private readonly refused = new Map<string, { version: string; code: string }>();
  private own: OwnLease | null = null;
  /** Refusals counted since start, by reason (also exported as flannel_leases_invalid_total). */
  readonly refusedByReason = new Map<string, number>();
  /** Keys decided since start: what listings and changes cost (a change costs its claim group). */
  decisions = 0;

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

  /**
   * Our own subnets (never a remote lease, and nothing overlapping them may be routed away) and what we
   * publish (`attrs`: no remote lease may carry our VTEP MACs or our PublicIP). A change re-checks every
   * key's claims; redecide() then says what it changed for the backend.
   */
  setOwn(subnet: Ip4Net, ipv6Subnet: Ip6Net | null = null, attrs: LeaseAttrs | null = null): void {
    if (this.own && sameSubnets(this.own, { subnet, ipv6Subnet }) && this.own.attrs === attrs) return;
    this.own = { subnet, ipv6Subnet, attrs };
    this.claims.clear();
    this.claimed.clear();
    for (const r of this.records.values()) this.index(r);
  }

  /** Why a well-formed remote lease cannot be used on its own merits, or null. */
  private refusal(r: LeaseRecord): Refusal | null {
    const own = this.own;
    const v6 = this.network.ipv6 ? (r.ipv6Subnet ?? null) : null;
    // Checked first: a key such as <our net>-23 or -25 claims our pods' addresses, and its warning says so.
    if (own && r.subnet.overlaps(own.subnet)) return { code: 'overlap', reason: `overlaps our own subnet ${own.subnet}` };
    if (own?.ipv6Subnet && v6?.overlaps(own.ipv6Subnet)) return { code: 'overlap', reason: `overlaps our own IPv6 subnet ${own.ipv6Subnet}` };
    const mine = own?.attrs?.backend;
    const theirs = r.attrs.backend;
    if (mine?.type === 'vxlan' && theirs.type === 'vxlan') {
      if (theirs.vtep.mac === mine.vtep.mac) return { code: 'duplicate_vtep_mac', reason: `carries this node's own VTEP MAC ${mine.vtep.mac}` };
      if (mine.vtepV6 && theirs.vtepV6?.mac === mine.vtepV6.mac) {
        return { code: 'duplicate_vtep_mac', reason: `carries this node's own IPv6 VTEP MAC ${mine.vtepV6.mac}` };
      }
    }
    if (mine) {
      const ours = wireguardKeys(mine);
      const same = wireguardKeys(theirs).find((k) => ours.includes(k));
      if (same !== undefined) return { code: 'duplicate_public_key', reason: `carries this node's own WireGuard public key ${same}` };
    }
    if (own?.attrs && r.attrs.publicIP === own.attrs.publicIP) {
      return { code: 'duplicate_public_ip', reason: `carries this node's own PublicIP ${own.attrs.publicIP}: another node is configured with it` };
    }
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

  private isOwnKey(r: LeaseRecord): boolean {
    return this.own !== null && sameSubnets(r, this.own);
  }

  /** Rebuilds the known set from a full listing and returns the differences as events. */
  replaceAll(listing: LeaseListing): LeaseEvent[] {
    const keys = new Set([...this.records.keys(), ...this.invalid.keys(), ...this.heldBy.keys()]);
    this.records.clear();
    this.invalid.clear();
    this.claims.clear();
    this.claimed.clear();
    for (const bad of listing.invalid) {
      if (this.countedOnly(bad)) continue;
      this.invalid.set(bad.key, bad);
      keys.add(bad.key);
    }
    for (const r of listing.records) {
      this.records.set(r.key, r);
      this.index(r);
      keys.add(r.key);
    }
    const { events, refused } = this.decide(keys);
    this.warnListing(refused);
    return events;
  }

  /**
   * Applies watched changes to keys other than our own and returns the events they make. A put that
   * is refused removes what the key held before, as a deletion does. Costs the size of the batch and
   * of the claim groups it touches, whatever the number of keys: the keys decided again are the
   * changed ones and those linked to them by a claimed subnet, oldest first, so that the older-key
   * rule holds whatever the order of arrival.
   */
  apply(changes: readonly LeaseChange[]): LeaseEvent[] {
    const keys = new Set<string>();
    const subnets: string[] = [];
    for (const change of changes) {
      if (change.type === 'invalid' && this.countedOnly(change)) continue;
      const key = change.type === 'put' ? change.record.key : change.key;
      subnets.push(...this.unindex(key));
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
        subnets.push(...this.index(change.record));
      }
      keys.add(key);
    }
    const { events, refused } = this.decide(this.linked(keys, subnets));
    for (const bad of refused) if (bad.tell) this.refuseOne(bad);
    return events;
  }

  /** A key refused at parse time for its length: counted each time it is seen, never kept (see MAX_KEY_NAME_CHARS). */
  private countedOnly(bad: InvalidLeaseKey): boolean {
    if (bad.code !== 'key_too_long') return false;
    this.refusedByReason.set(bad.code, (this.refusedByReason.get(bad.code) ?? 0) + 1);
    leaseMetrics.invalid.inc({ reason: bad.code });
    return true;
  }

  /** What a key claims: its IPv4 subnet, its IPv6 one in a dual-stack network, its VTEP MACs and its WireGuard public key. */
  private claimKeys(r: LeaseRecord): string[] {
    const v6 = this.network.ipv6 ? (r.ipv6Subnet ?? null) : null;
    const out = [r.subnet.toKey()];
    if (v6) out.push(`6/${v6.toKey()}`);
    const { backend } = r.attrs;
    if (backend.type === 'vxlan') {
      out.push(MAC_CLAIM + backend.vtep.mac);
      if (backend.vtepV6) out.push(MAC6_CLAIM + backend.vtepV6.mac);
    }
    for (const key of wireguardKeys(backend)) out.push(WG_KEY_CLAIM + key);
    return out;
  }

  /** Records a key's claims, if it passes its own checks (a refused key takes nothing); returns them. */
  private index(r: LeaseRecord): readonly string[] {
    if (this.isOwnKey(r) || this.refusal(r)) return [];
    const subnets = this.claimKeys(r);
    this.claimed.set(r.key, subnets);
    for (const c of subnets) {
      const held = this.claims.get(c);
      if (held === undefined) this.claims.set(c, r.key);
      else if (typeof held === 'string') this.claims.set(c, new Set([held, r.key]));
      else held.add(r.key);
    }
    return subnets;
  }

  /** Removes a key's claims; returns the subnets it claimed (their other claimants are to be decided again). */
  private unindex(key: string): readonly string[] {
    const subnets = this.claimed.get(key);
    if (!subnets) return [];
    this.claimed.delete(key);
    for (const c of subnets) {
      const held = this.claims.get(c);
      if (held === key) this.claims.delete(c);
      else if (typeof held === 'object') {
        held.delete(key);
        if (held.size === 1) this.claims.set(c, held.values().next().value!);
      }
    }
    return subnets;
  }

  /** `keys`, plus every key linked to them or to `subnets` through claimed subnets (transitively). */
  private linked(keys: Set<string>, subnets: readonly string[]): Set<string> {
    const todo = [...subnets];
    for (const key of keys) todo.push(...(this.claimed.get(key) ?? []));
    const seen = new Set<string>();
    for (let c = todo.pop(); c !== undefined; c = todo.pop()) {
      if (seen.has(c)) continue;
      seen.add(c);
      const held = this.claims.get(c);
      for (const key of held === undefined ? [] : typeof held === 'string' ? [held] : held) {
        if (keys.has(key)) continue;
        keys.add(key);
        todo.push(...this.claimed.get(key)!);
      }
    }
    return keys;
  }

  /**
   * Decides `keys` (which must hold every key sharing a claimed subnet with one of them), updates the
   * lease map, and returns the events and every refused key among them.
   */
  private decide(keys: Iterable<string>): { events: LeaseEvent[]; refused: Refused[] } {
    const refused: Refused[] = [];
    const refuse = (bad: InvalidLeaseKey): void => {
      refused.push({ ...bad, ...this.noteRefused(bad) });
    };
    // What these keys held goes first: they are decided afresh, as a group.
    const before = new Map<string, Lease>();
    const contested: LeaseRecord[] = [];
    const winners: LeaseRecord[] = [];
    for (const key of keys) {
      this.decisions++;
      const held = this.heldBy.get(key);
      if (held !== undefined) {
        before.set(held, this.leases.get(held)!);
        this.leases.delete(held);
        this.heldBy.delete(key);
      }
      const bad = this.invalid.get(key);
      if (bad) {
        refuse(bad);
        continue;
      }
      const r = this.records.get(key);
      const claims = this.claimed.get(key);
      if (claims) {
        // Passed its own checks when indexed: contested only where another key claims the same.
        if (claims.every((c) => typeof this.claims.get(c) === 'string')) winners.push(r!);
        else contested.push(r!);
        continue;
      }
      const why = r && !this.isOwnKey(r) ? this.refusal(r) : null;
      if (why) refuse(this.refusedRecord(r!, why));
      else this.refused.delete(key); // deleted, or our own key
    }
    // Where keys claim the same subnet, MAC or public key, the oldest of them keeps it; one that lost a claim claims nothing.
    contested.sort(olderFirst);
    const takenBy = new Map<string, LeaseRecord>();
    for (const r of contested) {
      const claims = this.claimed.get(r.key)!;
      const lost = claims.find((c) => takenBy.has(c));
      if (lost !== undefined) {
        refuse(this.refusedRecord(r, lostClaim(lost, takenBy.get(lost)!.key)));
        continue;
      }
      for (const c of claims) takenBy.set(c, r);
      winners.push(r);
    }
    const events: LeaseEvent[] = [];
    const added: LeaseEvent[] = [];
    for (const r of winners) {
      this.refused.delete(r.key);
      const subnetKey = r.subnet.toKey();
      const lease = this.leaseOf(r);
      this.leases.set(subnetKey, lease);
      this.heldBy.set(r.key, subnetKey);
      const prev = before.get(subnetKey);
      if (!prev || !sameLeaseAttrs(prev.attrs, lease.attrs) || !sameSubnets(prev, lease)) added.push({ type: 'added', lease });
    }
    for (const [subnetKey, lease] of before) if (!this.leases.has(subnetKey)) events.push({ type: 'removed', lease });
    events.push(...added);
    leaseMetrics.remote.set(this.leases.size);
    return { events, refused };
  }

  private leaseOf(r: LeaseRecord): Lease {
    const v6 = this.network.ipv6 ? (r.ipv6Subnet ?? null) : null;
    return { subnet: r.subnet, ...(v6 ? { ipv6Subnet: v6 } : {}), attrs: r.attrs, expiration: null };
  }

  /**
   * After setOwn moved us to a subnet still known as a peer's: re-decides every key (the own-subnet rule
   * now refuses that peer) and returns the events.
   */
  redecide(): LeaseEvent[] {
    const { events, refused } = this.decide(new Set([...this.records.keys(), ...this.invalid.keys(), ...this.heldBy.keys()]));
    for (const bad of refused) if (bad.tell) this.refuseOne(bad);
    return events;
  }

  private refusedRecord(r: LeaseRecord, why: Refusal): InvalidLeaseKey {
    return { key: r.key, code: why.code, reason: why.reason, subnet: r.subnet, ipv6Subnet: r.ipv6Subnet ?? null, modRevision: r.modRevision };
  }

  /**
   * Records a refused key version. `fresh` when this version was not counted before (it is counted now);
   * `tell` when the key was not refused for this reason before, so that a key rewritten again and again
   * (a flapping or hostile writer) is counted per change but logged once per reason.
   */
  private noteRefused(bad: InvalidLeaseKey): { fresh: boolean; tell: boolean } {
    const version = `${bad.modRevision}/${bad.code}`;
    const last = this.refused.get(bad.key);
    if (last?.version === version) return { fresh: false, tell: false };
    this.refused.set(bad.key, { version, code: bad.code });
    this.refusedByReason.set(bad.code, (this.refusedByReason.get(bad.code) ?? 0) + 1);
    leaseMetrics.invalid.inc({ reason: bad.code });
    return { fresh: true, tell: last?.code !== bad.code };
  }

  /** A watched key that changed into something refused for a reason not logged for it yet: one line for it. */
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
      : bad.code === 'duplicate_vtep_mac' ? 'skipping a lease whose VTEP MAC belongs to another node'
      : bad.code === 'duplicate_public_key' ? 'skipping a lease whose WireGuard public key belongs to another node'
      : bad.code === 'duplicate_public_ip' ? 'skipping a lease that carries our own public IP: another node is configured with it'
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
