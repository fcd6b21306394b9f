// IPv6 addresses and networks. Parsing and text form come from ipaddr.js (the `::` rules, embedded
// IPv4, RFC 5952's canonical form, which is what upstream's Go net.IP prints); subnet arithmetic
// (masking, stepping to the next subnet, containment) is plain BigInt. See docs/dual-stack.md for
// why this library. The CNI plugin imports this module through the env file reader, so the plugin's
// copy of dist/ takes node_modules/ipaddr.js with it (deploy/kubernetes/kube-flannel.yml).
import ipaddr from 'ipaddr.js';
import { quoted } from './printable.js';

export type Ip6 = bigint;

const ALL_ONES = (1n << 128n) - 1n;

/** A dotted quad in the last 32 bits, as Go reads it: no leading zeros. */
const EMBEDDED_V4 = /(?:^|:)(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})$/;

/**
 * Parses an IPv6 address exactly, as Go's net.ParseIP does: ASCII hex groups, one `::`, an optional
 * dotted quad at the end; no spaces (nothing is trimmed), no zone (fe80::1%eth0 names a link, not an
 * address other nodes can use), nothing longer than 45 characters.
 */
export function parseIp6(text: string): Ip6 {
  const bad = () => new Error(`not an IPv6 address: ${quoted(text)}`);
  if (text.length < 2 || text.length > 45 || !/^[0-9a-fA-F:.]+$/.test(text)) throw bad();
  if (text.includes('.') && !EMBEDDED_V4.test(text)) throw bad();
  if (!ipaddr.IPv6.isValid(text)) throw bad();
  let n = 0n;
  for (const part of ipaddr.IPv6.parse(text).parts) n = (n << 16n) | BigInt(part);
  return n;
}

export function isIp6(text: string): boolean {
  try {
    parseIp6(text);
    return true;
  } catch {
    return false;
  }
}

/** The canonical text form (RFC 5952: lower case, the longest run of zero groups as `::`). */
export function formatIp6(ip: Ip6): string {
  const parts: number[] = [];
  for (let shift = 112n; shift >= 0n; shift -= 16n) parts.push(Number((ip >> shift) & 0xffffn));
  return new ipaddr.IPv6(parts).toRFC5952String();
}

function maskOf(prefixLen: number): bigint {
  return prefixLen === 0 ? 0n : (ALL_ONES << BigInt(128 - prefixLen)) & ALL_ONES;
}

/** An IPv6 network: a base address with all host bits zero, and a prefix length. */
export class Ip6Net {
  readonly ip: Ip6;
  readonly prefixLen: number;

  constructor(ip: Ip6, prefixLen: number) {
    if (!Number.isInteger(prefixLen) || prefixLen < 0 || prefixLen > 128) throw new Error(`invalid IPv6 prefix length ${prefixLen}`);
    if (ip < 0n || ip > ALL_ONES) throw new Error(`IPv6 address out of range: ${ip}`);
    this.prefixLen = prefixLen;
    this.ip = ip & maskOf(prefixLen);
  }

  /** Parses "addr/len". Host bits set in the address are an error unless `allowHostBits`. */
  static parse(cidr: string, allowHostBits = false): Ip6Net {
    const parts = cidr.trim().split('/');
    if (parts.length !== 2 || !/^\d{1,3}$/.test(parts[1]!)) throw new Error(`not an IPv6 CIDR: "${cidr}"`);
    const ip = parseIp6(parts[0]!);
    const net = new Ip6Net(ip, Number(parts[1]));
    if (!allowHostBits && net.ip !== ip) throw new Error(`"${cidr}" has host bits set (network is ${net})`);
    return net;
  }

  /** Parses the key form "addr-len" (the part of an etcd lease key after `&`). */
  static fromKey(key: string): Ip6Net {
    const m = /^([0-9a-f:.]+)-(\d{1,3})$/.exec(key);
    if (!m) throw new Error(`not an IPv6 subnet key: "${key}"`);
    return Ip6Net.parse(`${m[1]}/${m[2]}`);
  }

  get size(): bigint {
    return 1n << BigInt(128 - this.prefixLen);
  }

  get last(): Ip6 {
    return this.ip + this.size - 1n;
  }

  contains(ip: Ip6): boolean {
    return (ip & maskOf(this.prefixLen)) === this.ip;
  }

  covers(other: Ip6Net): boolean {
    return other.prefixLen >= this.prefixLen && this.contains(other.ip);
  }

  overlaps(other: Ip6Net): boolean {
    return this.contains(other.ip) || other.contains(this.ip);
  }

  equals(other: Ip6Net): boolean {
    return this.ip === other.ip && this.prefixLen === other.prefixLen;
  }

  /** The network of the same size that follows this one (null past the end of the address space). */
  next(): Ip6Net | null {
    const ip = this.ip + this.size;
    return ip > ALL_ONES ? null : new Ip6Net(ip, this.prefixLen);
  }

  /** The subnet's first host address (the bridge's, `::1` on a /64), with the subnet's prefix. */
  firstHostCidr(): string {
    return `${formatIp6(this.ip + 1n)}/${this.prefixLen}`;
  }

  toString(): string {
    return `${formatIp6(this.ip)}/${this.prefixLen}`;
  }

  /** The key form, "addr-len". */
  toKey(): string {
    return `${formatIp6(this.ip)}-${this.prefixLen}`;
  }
}
