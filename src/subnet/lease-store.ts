// The seam between the lease manager and where leases are kept. The manager needs only this: read
// every lease at one revision, follow changes from a revision, create a key that must not exist,
// take over one unchanged since it was read, keep an expiring lease alive, and delete. src/etcd/
// implements it on etcd v3; src/subnet/memory-store.ts implements it in memory for fast tests.
import { Ip4Net } from '../common/ip4.js';
import { Ip6Net } from '../common/ip6.js';
import { type LeaseAttrs, decodeLeaseAttrs } from './lease.js';
import { rejectionOf } from './lease-validation.js';
import { LeaseRejected, hasControlChars } from './lease-reject.js';
import { quoted } from '../common/printable.js';

/** The subnets one lease key names: always an IPv4 one, and an IPv6 one in a dual-stack network. */
export interface LeaseSubnets {
  subnet: Ip4Net;
  ipv6Subnet: Ip6Net | null;
}

/** The key name under subnets/, as upstream writes it: `a.b.c.d-24`, or `a.b.c.d-24&<ipv6>-64` in dual stack. */
export function leaseKeyName(subnet: Ip4Net, ipv6Subnet: Ip6Net | null = null): string {
  return ipv6Subnet ? `${subnet.toKey()}&${ipv6Subnet.toKey()}` : subnet.toKey();
}

/**
 * An IPv4 subnet in the key form "a.b.c.d-len", exactly; throws LeaseRejected: `control_chars` when the
 * text holds any, else `bad_key` (the message escaped and bounded: keys come from anyone).
 */
export function parseIp4SubnetKey(text: string): Ip4Net {
  if (hasControlChars(text)) throw new LeaseRejected('control_chars', `subnet key ${quoted(text)} contains control characters`);
  try {
    return Ip4Net.fromKey(text);
  } catch (err) {
    throw new LeaseRejected('bad_key', (err as Error).message);
  }
}

/** Parses a key name under subnets/ (see leaseKeyName); throws LeaseRejected: `control_chars` or `bad_key`. */
export function parseLeaseKeyName(name: string): LeaseSubnets {
  const amp = name.indexOf('&');
  if (amp < 0) return { subnet: parseIp4SubnetKey(name), ipv6Subnet: null };
  const subnet = parseIp4SubnetKey(name.slice(0, amp));
  const v6 = name.slice(amp + 1);
  // Upstream writes (and matches) the IPv6 part in lower case only.
  if (hasControlChars(v6)) throw new LeaseRejected('control_chars', `subnet key ${quoted(name)} contains control characters`);
  try {
    if (!/^[0-9a-f:]+-\d{1,3}$/.test(v6)) throw new Error(`not a subnet key: ${quoted(name)}`);
    return { subnet, ipv6Subnet: Ip6Net.fromKey(v6) };
  } catch (err) {
    throw new LeaseRejected('bad_key', (err as Error).message);
  }
}

/** Two lease keys name the same subnets. */
export function sameSubnets(a: { subnet: Ip4Net; ipv6Subnet?: Ip6Net | null }, b: { subnet: Ip4Net; ipv6Subnet?: Ip6Net | null }): boolean {
  const [x, y] = [a.ipv6Subnet ?? null, b.ipv6Subnet ?? null];
  return a.subnet.equals(b.subnet) && (x === null ? y === null : y !== null && x.equals(y));
}

/** A lease as stored. Revisions are decimal strings: etcd's are int64. */
export interface LeaseRecord {
  /** The whole key, as stored. */
  key: string;
  subnet: Ip4Net;
  /** The IPv6 subnet the key names too (`…&<ipv6>-<len>`); null or absent in an IPv4-only key. */
  ipv6Subnet?: Ip6Net | null;
  attrs: LeaseAttrs;
  /** The expiring lease the key is bound to (decimal string), or null for a reservation. */
  leaseId: string | null;
  modRevision: string;
  /** When the key was created: of two keys claiming the same addresses, the older one wins. */
  createRevision: string;
}

/** A key under subnets/ whose name or value cannot be used. */
export interface InvalidLeaseKey {
  /** The whole key, as stored. */
  key: string;
  /** A short machine-readable reason (a metrics label): a LeaseRejectReason such as `bad_key`, `bad_public_ip`. */
  code: string;
  /** What is wrong, for people. */
  reason: string;
  /** The subnet named by the key, when the key itself is well-formed (the key still occupies it). */
  subnet: Ip4Net | null;
  /** The IPv6 subnet named by the key, when there is one and the key is well-formed. */
  ipv6Subnet?: Ip6Net | null;
  modRevision: string;
}

/** Every lease at one revision. */
export interface LeaseListing {
  records: LeaseRecord[];
  invalid: InvalidLeaseKey[];
  revision: string;
}

export type LeaseChange =
  | { type: 'put'; record: LeaseRecord }
  /** `revision` is the revision of the deletion; `key` the whole key. */
  | { type: 'delete'; key: string; subnet: Ip4Net | null; ipv6Subnet?: Ip6Net | null; revision: string }
  | ({ type: 'invalid'; revision: string } & InvalidLeaseKey);

export interface LeaseWatchHandlers {
  /** Changes in revision order; one call may carry many (a burst of puts arrives in few calls). */
  onChanges(changes: LeaseChange[], revision: string): void;
  /** The watch cannot continue from its revision (e.g. compacted away): the caller must list again. */
  onReset(reason: string): void;
  onDisconnect?(reason: string): void;
  onReconnect?(): void;
}

export interface Stoppable {
  stop(): Promise<void>;
}

/** A key written by us: the whole key, the expiring lease it is bound to ('' for none) and the revision of the write. */
export interface WrittenLease {
  key: string;
  leaseId: string;
  revision: string;
}

/** The store cannot be reached right now (as opposed to refusing a request or holding bad data). */
export class LeaseStoreUnavailableError extends Error {
  constructor(
    readonly op: string,
    override readonly cause: unknown,
  ) {
    super(`${op}: ${cause instanceof Error ? cause.message : String(cause)}`);
    this.name = 'LeaseStoreUnavailableError';
  }
}

export interface LeaseStore {
  /** Every lease, read at one revision, plus the keys that cannot be used. */
  listLeases(): Promise<LeaseListing>;
  /**
   * The keys created after `revision` (createRevision > revision) that exist now, read as listLeases
   * reads: what a listing at `revision` lacks. Small whatever the number of keys (etcd filters them).
   */
  listLeasesCreatedAfter(revision: string): Promise<LeaseListing>;
  /**
   * Creates the key for `subnet` (and `ipv6Subnet`, in dual stack) only if it does not exist, bound to
   * a fresh expiring lease of `ttlSeconds`. Null when the key already existed (another node won the race).
   */
  createLease(subnet: Ip4Net, attrs: LeaseAttrs, ttlSeconds: number, ipv6Subnet?: Ip6Net | null): Promise<WrittenLease | null>;
  /**
   * Rewrites an existing key (ours from before a restart) with fresh attrs, provided it is unchanged
   * since `existing.modRevision`. A reservation stays a reservation. Null when it changed meanwhile.
   */
  takeOverLease(existing: LeaseRecord, attrs: LeaseAttrs, ttlSeconds: number): Promise<WrittenLease | null>;
  /** Extends an expiring lease to its full TTL again: the new TTL in seconds, or 0 when it is gone. */
  renewLease(leaseId: string): Promise<number>;
  /** Deletes the key of `subnet` (and `ipv6Subnet`); false when there was none. */
  deleteLease(subnet: Ip4Net, ipv6Subnet?: Ip6Net | null): Promise<boolean>;
  /** Deletes `key` (the whole key, as listed) if it is unchanged since `modRevision`; false when it changed or is gone. */
  deleteLeaseIf(key: string, modRevision: string): Promise<boolean>;
  /** Follows changes from `fromRevision` (inclusive), resuming by itself after lost connections. */
  watchLeases(fromRevision: string, handlers: LeaseWatchHandlers): Promise<Stoppable>;
  /**
   * Aborted when the store answers again after failing (then replaced by a fresh signal): retry loops
   * take it as their wake-up, so a wait after a failure ends as soon as the store is back.
   */
  readonly recovered: AbortSignal;
}

/**
 * The longest key name (the part after subnets/) read as a possible subnet key. The longest upstream
 * writes, `255.255.255.255-32&ffff:…:ffff-128`, has 62 characters; a longer one is refused at once and
 * only counted: not parsed, and never kept whole in memory (anyone who can write the prefix can write
 * names of any length).
 */
export const MAX_KEY_NAME_CHARS = 128;

/** The subnets a key under subnets/ names (`name` is the part after the prefix), or why it names none. */
export function parseLeaseKey(key: string, name: string, modRevision: string): LeaseSubnets | InvalidLeaseKey {
  if (name.length > MAX_KEY_NAME_CHARS) {
    const kept = key.slice(0, key.length - name.length + 32);
    return {
      key: `${kept}…`, code: 'key_too_long', reason: `the key name has ${name.length} characters; no subnet key has more than ${MAX_KEY_NAME_CHARS}`,
      subnet: null, modRevision,
    };
  }
  try {
    return parseLeaseKeyName(name);
  } catch (err) {
    const { reason, detail } = rejectionOf(err);
    return { key, code: reason === 'bad_json' ? 'bad_key' : reason, reason: detail, subnet: null, modRevision };
  }
}

/** One stored key and value as a lease record, or as an invalid key with the reason: every store reads keys this way. */
export function parseStoredLease(
  entry: { key: string; name: string; value: string; leaseId: string | null; modRevision: string; createRevision: string },
): LeaseRecord | InvalidLeaseKey {
  const { key, modRevision } = entry;
  const named = parseLeaseKey(key, entry.name, modRevision);
  if ('code' in named) return named;
  const { subnet, ipv6Subnet } = named;
  try {
    const attrs = decodeLeaseAttrs(entry.value);
    return { key, subnet, ipv6Subnet, attrs, leaseId: entry.leaseId, modRevision, createRevision: entry.createRevision };
  } catch (err) {
    const { reason, detail } = rejectionOf(err);
    return { key, code: reason, reason: detail, subnet, ipv6Subnet, modRevision };
  }
}
