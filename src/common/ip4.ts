// IPv4 addresses as unsigned 32-bit integers, and IPv4 networks (address + prefix length).
// Subnet allocation walks networks numerically, which is simplest and exact with uint32 arithmetic.
// Free of npm dependencies: the CNI plugin uses it too.
//
// Parsing is exact: text that reaches `ip -batch` or a lease is either canonical or refused.
import { quoted } from './printable.js';

export type Ip4 = number;

/**
 * One octet as Go's net.ParseIP accepts it: 1-3 ASCII digits, no leading zero (Go rejects "01"
 * since 1.17, as it reads as octal elsewhere), at most 255. `\d` in a JS regex is ASCII only.
 */
const OCTET = '(0|[1-9][0-9]{0,2})';
const DOTTED_QUAD = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}$`);

/** Shortens and escapes untrusted text for an error message (see src/common/printable.ts). */
function shown(text: string): string {
  return quoted(text, 64);
}

/**
 * Parses an IPv4 address exactly: a canonical dotted quad and nothing else — no surrounding or
 * Unicode spaces, no leading zeros, no IPv4-mapped IPv6 form. What is accepted is therefore its
 * own canonical form, so the text can be handed to `ip`/`bridge` as it is.
 */
export function parseIp4(text: string): Ip4 {
  const m = typeof text === 'string' ? DOTTED_QUAD.exec(text) : null;
  if (!m) throw new Error(`not an IPv4 address: ${typeof text === 'string' ? shown(text) : typeof text}`);
  let n = 0;
  for (let i = 1; i <= 4; i++) {
    const octet = Number(m[i]);
    if (octet > 255) throw new Error(`not an IPv4 address: ${shown(text)}`);
    n = n * 256 + octet;
  }
  return n >>> 0;
}

export function isIp4(text: string): boolean {
  try {
    parseIp4(text);
    return true;
  } catch {
    return false;
  }
}

/**
 * Why `ip` cannot be a node's own (public or interface) address, or null when it can: "this
 * network" 0/8, loopback 127/8, multicast 224/4 and reserved 240/4 (with the broadcast address).
 * An FDB entry or a UDP destination at such an address would flood, loop or go nowhere.
 */
export function notUnicastReason(ip: Ip4): string | null {
  const first = ip >>> 24;
  if (first === 0) return 'is in 0.0.0.0/8 ("this network")';
  if (first === 127) return 'is a loopback address';
  if (first >= 224 && first <= 239) return 'is a multicast address';
  if (first >= 240) return 'is a reserved or broadcast address';
  return null;
}

/** parseIp4, and the address must be a unicast host address (see notUnicastReason). */
export function parseUnicastIp4(text: string): Ip4 {
  const ip = parseIp4(text);
  const why = notUnicastReason(ip);
  if (why) throw new Error(`${text} ${why}`);
  return ip;
}

/** A prefix length as canonical decimal: "0".."32", no leading zero, no sign, no spaces. */
const PREFIX_LEN = /^(0|[1-9][0-9]?)$/;

function parsePrefixLen(text: string, whole: string, what: string): number {
  const n = PREFIX_LEN.test(text) ? Number(text) : NaN;
  if (!(n >= 0 && n <= 32)) throw new Error(`not ${what}: ${shown(whole)}`);
  return n;
}

export function formatIp4(ip: Ip4): string {
  return [ip >>> 24, (ip >>> 16) & 255, (ip >>> 8) & 255, ip & 255].join('.');
}

function maskOf(prefixLen: number): number {
  return prefixLen === 0 ? 0 : (0xffffffff << (32 - prefixLen)) >>> 0;
}

/** An IPv4 network: a base address with all host bits zero, and a prefix length. */
export class Ip4Net {
  readonly ip: Ip4;
  readonly prefixLen: number;

  constructor(ip: Ip4, prefixLen: number) {
    if (!Number.isInteger(prefixLen) || prefixLen < 0 || prefixLen > 32) {
      throw new Error(`invalid prefix length ${prefixLen}`);
    }
    this.prefixLen = prefixLen;
    this.ip = (ip & maskOf(prefixLen)) >>> 0;
  }

  /** Parses "a.b.c.d/len". Host bits set in the address are an error unless `allowHostBits`. */
  static parse(cidr: string, allowHostBits = false): Ip4Net {
    return Ip4Net.split(cidr, '/', 'an IPv4 CIDR', allowHostBits);
  }

  /** Parses the etcd key form "a.b.c.d-len" used under <prefix>/subnets/, exactly (no host bits, canonical numbers). */
  static fromKey(key: string): Ip4Net {
    return Ip4Net.split(key, '-', 'a subnet key (a.b.c.d-len)', false);
  }

  private static split(text: string, sep: '/' | '-', what: string, allowHostBits: boolean): Ip4Net {
    if (typeof text !== 'string') throw new Error(`not ${what}: ${typeof text}`);
    const at = text.indexOf(sep);
    if (at < 0 || text.indexOf(sep, at + 1) >= 0) throw new Error(`not ${what}: ${shown(text)}`);
    let ip: Ip4;
    try {
      ip = parseIp4(text.slice(0, at));
    } catch {
      throw new Error(`not ${what}: ${shown(text)}`);
    }
    const net = new Ip4Net(ip, parsePrefixLen(text.slice(at + 1), text, what));
    if (!allowHostBits && net.ip !== ip) throw new Error(`${shown(text)} has host bits set (network is ${net})`);
    return net;
  }

  get mask(): number {
    return maskOf(this.prefixLen);
  }

  /** Number of addresses in the network. */
  get size(): number {
    return 2 ** (32 - this.prefixLen);
  }

  get last(): Ip4 {
    return (this.ip + this.size - 1) >>> 0;
  }

  contains(ip: Ip4): boolean {
    return ((ip & this.mask) >>> 0) === this.ip;
  }

  /** True when `other` lies entirely inside this network. */
  covers(other: Ip4Net): boolean {
    return other.prefixLen >= this.prefixLen && this.contains(other.ip);
  }

  overlaps(other: Ip4Net): boolean {
    return this.contains(other.ip) || other.contains(this.ip);
  }

  equals(other: Ip4Net): boolean {
    return this.ip === other.ip && this.prefixLen === other.prefixLen;
  }

  /** The network of the same size that follows this one. */
  next(): Ip4Net {
    return new Ip4Net((this.ip + this.size) >>> 0, this.prefixLen);
  }

  toString(): string {
    return `${formatIp4(this.ip)}/${this.prefixLen}`;
  }

  /** The etcd key form, "a.b.c.d-len". */
  toKey(): string {
    return `${formatIp4(this.ip)}-${this.prefixLen}`;
  }
}
