// Strict validation of leases written by anyone with access to the prefix. Pure
// functions: the registry decodes every key and value with them, the lease manager adds the checks
// that need the network config (checkLeaseSubnet) and counts rejections by reason.
//
// Reading follows Go's encoding/json as upstream flanneld uses it (keys match case-insensitively,
// unknown keys are ignored) but refuses anything that upstream would accept only by accident and
// that could hurt a peer: padded or Unicode-spaced addresses, multicast MACs, control characters,
// oversized values.
import { formatIp6, parseIp6 } from '../common/ip6.js';
import { quoted } from '../common/printable.js';
import type { NetworkConfig } from './config.js';
import type { Ip4Net } from '../common/ip4.js';
import { LeaseRejected, type LeaseRejectReason } from './lease-reject.js';

export { LEASE_REJECT_REASONS, LeaseRejected, type LeaseRejectReason, hasControlChars } from './lease-reject.js';

/**
 * The largest lease value accepted, in bytes. Upstream's largest (dual stack, vxlan, with
 * BackendV6Data) is about 230 bytes; 4 KiB leaves room for fields added later while bounding what
 * one key can make every node parse, keep and log (3,000 junk keys stay under 12 MB).
 */
export const MAX_LEASE_VALUE_BYTES = 4096;

/** A network-dependent refusal: prefix length ≠ SubnetLen, or outside Network. */
export interface SubnetProblem {
  reason: LeaseRejectReason;
  detail: string;
}

/**
 * The checks on a lease's subnet that need the network config: its prefix length must equal
 * SubnetLen and it must lie inside Network. Reservations (keys without an etcd lease) get the same
 * checks: they are routed like any other lease. Null when the subnet is acceptable.
 */
export function checkLeaseSubnet(subnet: Ip4Net, network: NetworkConfig): SubnetProblem | null {
  if (subnet.prefixLen !== network.subnetLen) {
    return { reason: 'wrong_prefix_len', detail: `subnet ${subnet} is a /${subnet.prefixLen}; the network's SubnetLen is ${network.subnetLen}` };
  }
  if (!network.network.covers(subnet)) {
    return { reason: 'outside_network', detail: `subnet ${subnet} is not inside Network ${network.network}` };
  }
  return null;
}

/** The reason and message of any error thrown while decoding a lease (LeaseRejected or not). */
export function rejectionOf(err: unknown): SubnetProblem {
  if (err instanceof LeaseRejected) return { reason: err.reason, detail: err.message };
  return { reason: 'bad_json', detail: err instanceof Error ? err.message : String(err) };
}

// ---------------------------------------------------------------------------------------------
// Go's encoding/json key matching

/**
 * Go's case folding of a JSON key, reduced to what can matter for ASCII field names: a-z fold to
 * A-Z, and the only non-ASCII letters whose fold orbit holds an ASCII letter are KELVIN SIGN
 * (U+212A, with k/K) and LATIN SMALL LETTER LONG S (U+017F, with s/S). Every other character folds
 * to something non-ASCII, so it never matches an ASCII field name either way.
 */
export function goFoldKey(key: string): string {
  // ASCII only: String#toUpperCase would also fold letters Go keeps apart (dotless ı, ligatures, ß).
  return key.replace(/[a-z]+/g, (run) => run.toUpperCase()).replace(/\u212a/g, 'K').replace(/\u017f/g, 'S');
}

/** Field names by their fold, built once per list of names (every lease is decoded against the same few). */
const foldTables = new WeakMap<readonly string[], Map<string, string>>();

/**
 * Picks the fields named in `names` out of a decoded JSON object the way Go's encoding/json fills a
 * struct: a key matches a field when equal after case folding. Two keys for the same field (which
 * Go would resolve silently, last one winning) are refused: a lease that reads differently to
 * different parsers is not one to route by. Exact duplicates never get here (JSON.parse keeps the
 * last, as Go does). Returns the values by canonical field name.
 */
export function goJsonFields<N extends string>(obj: Record<string, unknown>, names: readonly N[], where: string): Partial<Record<N, unknown>> {
  let byFold = foldTables.get(names) as Map<string, N> | undefined;
  if (!byFold) {
    byFold = new Map(names.map((n) => [goFoldKey(n), n]));
    foldTables.set(names, byFold);
  }
  const out: Partial<Record<N, unknown>> = {};
  const seen = new Map<N, string>();
  for (const [key, value] of Object.entries(obj)) {
    // The exact spelling (what upstream writes) needs no folding.
    const name = (names as readonly string[]).includes(key) ? (key as N) : byFold.get(goFoldKey(key));
    if (name === undefined) continue; // unknown keys are ignored, as Go does
    const earlier = seen.get(name);
    if (earlier !== undefined) throw new LeaseRejected('bad_json', `${where} has both ${quoted(earlier)} and ${quoted(key)} for ${name}`);
    seen.set(name, key);
    out[name] = value;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// IPv6 (PublicIPv6)

// Parsing and the canonical text form are ip6.ts's (ipaddr.js underneath); re-exported for callers here.
export { formatIp6, parseIp6 } from '../common/ip6.js';

/** A node's IPv6 address: parsed exactly, unicast, returned in canonical form. */
export function parseUnicastIp6(text: string): string {
  const ip = parseIp6(text);
  const canonical = formatIp6(ip);
  if (ip === 0n) throw new Error(`${canonical} is the unspecified address`);
  if (ip === 1n) throw new Error('::1 is the loopback address');
  if (ip >> 120n === 0xffn) throw new Error(`${canonical} is a multicast address`);
  if (ip >> 32n === 0xffffn) throw new Error(`${canonical} is an IPv4-mapped address`);
  return canonical;
}

// ---------------------------------------------------------------------------------------------
// MAC addresses (VtepMAC)

const MAC_FORMS = [
  /^([0-9a-fA-F]{2}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})$/,
  /^([0-9a-fA-F]{2})-([0-9a-fA-F]{2})-([0-9a-fA-F]{2})-([0-9a-fA-F]{2})-([0-9a-fA-F]{2})-([0-9a-fA-F]{2})$/,
  /^([0-9a-fA-F]{2})([0-9a-fA-F]{2})\.([0-9a-fA-F]{2})([0-9a-fA-F]{2})\.([0-9a-fA-F]{2})([0-9a-fA-F]{2})$/,
];

/**
 * A VTEP's MAC in the 6-byte forms Go's net.ParseMAC reads (aa:bb:…, aa-bb-…, aabb.ccdd.eeff),
 * which must be unicast (group bit clear: not multicast, not broadcast) and not all zeros.
 * Returned as lower-case colon form, the only form that reaches `bridge`/`ip`. Throws LeaseRejected.
 */
export function parseVtepMac(value: unknown): string {
  if (typeof value !== 'string') throw new LeaseRejected('bad_vtep_mac', value === undefined || value === null ? 'VtepMAC is missing' : 'VtepMAC is not a string');
  const m = MAC_FORMS.map((re) => re.exec(value)).find((x) => x !== null);
  if (!m) throw new LeaseRejected('bad_vtep_mac', `VtepMAC ${quoted(value)} is not a MAC address`);
  const mac = m.slice(1, 7).join(':').toLowerCase();
  if (parseInt(mac.slice(0, 2), 16) & 1) throw new LeaseRejected('bad_vtep_mac', `VtepMAC ${mac} is a multicast address`);
  if (mac === '00:00:00:00:00:00') throw new LeaseRejected('bad_vtep_mac', 'VtepMAC is all zeros');
  return mac;
}
