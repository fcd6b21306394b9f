// Strict validation of leases written by anyone with access to the prefix (issue 11). Pure
// functions: the registry decodes every key and value with them, the lease manager adds the checks
// that need the network config (checkLeaseSubnet) and counts rejections by reason.
//
// Reading follows Go's encoding/json as upstream flanneld uses it (keys match case-insensitively,
// unknown keys are ignored) but refuses anything that upstream would accept only by accident and
// that could hurt a peer: padded or Unicode-spaced addresses, multicast MACs, control characters,
// oversized values.
import { quoted } from '../common/printable.js';
import type { NetworkConfig } from './config.js';
import type { Ip4Net } from './ip4.js';
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
  return key.replace(/[a-z]/g, (c) => c.toUpperCase()).replace(/\u212a/g, 'K').replace(/\u017f/g, 'S');
}

/**
 * Picks the fields named in `names` out of a decoded JSON object the way Go's encoding/json fills a
 * struct: a key matches a field when equal after case folding. Two keys for the same field (which
 * Go would resolve silently, last one winning) are refused: a lease that reads differently to
 * different parsers is not one to route by. Exact duplicates never get here (JSON.parse keeps the
 * last, as Go does). Returns the values by canonical field name.
 */
export function goJsonFields<N extends string>(obj: Record<string, unknown>, names: readonly N[], where: string): Partial<Record<N, unknown>> {
  const byFold = new Map(names.map((n) => [goFoldKey(n), n]));
  const out: Partial<Record<N, unknown>> = {};
  const seen = new Map<N, string>();
  for (const [key, value] of Object.entries(obj)) {
    const name = byFold.get(goFoldKey(key));
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

const HEX_GROUP = /^[0-9a-fA-F]{1,4}$/;
const EMBEDDED_V4 = /^(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})$/;

/**
 * Parses an IPv6 address as Go's net.ParseIP does (hex groups of 1-4 digits in either case, one
 * "::", an optional dotted quad in the last 32 bits) but with no zone, no spaces and no IPv4
 * text on its own. Returns the 8 groups.
 */
export function parseIp6(text: string): number[] {
  const bad = (): Error => new Error(`not an IPv6 address: ${quoted(text)}`);
  if (typeof text !== 'string' || text.length < 2 || text.length > 45) throw bad();
  const halves = text.split('::');
  if (halves.length > 2) throw bad();
  const groupsOf = (part: string, last: boolean): number[] => {
    if (part === '') return [];
    const words = part.split(':');
    const groups: number[] = [];
    words.forEach((w, i) => {
      if (last && i === words.length - 1 && w.includes('.')) {
        const m = EMBEDDED_V4.exec(w);
        if (!m) throw bad();
        const o = m.slice(1, 5).map(Number);
        if (o.some((x) => x > 255)) throw bad();
        groups.push((o[0]! << 8) | o[1]!, (o[2]! << 8) | o[3]!);
      } else {
        if (!HEX_GROUP.test(w)) throw bad();
        groups.push(parseInt(w, 16));
      }
    });
    return groups;
  };
  if (halves.length === 1) {
    const groups = groupsOf(text, true);
    if (groups.length !== 8) throw bad();
    return groups;
  }
  const head = groupsOf(halves[0]!, false);
  const tail = groupsOf(halves[1]!, true);
  if (head.length + tail.length > 7) throw bad(); // "::" stands for at least one zero group
  return [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
}

/** RFC 5952 text: lower case, no leading zeros, the longest run (≥ 2) of zero groups as "::". */
export function formatIp6(groups: readonly number[]): string {
  let bestAt = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) [bestAt, bestLen] = [i, j - i];
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestAt < 0) return hex.join(':');
  return `${hex.slice(0, bestAt).join(':')}::${hex.slice(bestAt + bestLen).join(':')}`;
}

/** A node's IPv6 address: parsed exactly, unicast, returned in canonical form. */
export function parseUnicastIp6(text: string): string {
  const g = parseIp6(text);
  const canonical = formatIp6(g);
  if (g.every((x) => x === 0)) throw new Error(`${canonical} is the unspecified address`);
  if (canonical === '::1') throw new Error('::1 is the loopback address');
  if (g[0]! >> 8 === 0xff) throw new Error(`${canonical} is a multicast address`);
  if (g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff) throw new Error(`${canonical} is an IPv4-mapped address`);
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
