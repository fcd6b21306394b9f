// IPv4 addresses as unsigned 32-bit integers, and IPv4 networks (address + prefix length).
// Subnet allocation walks networks numerically, which is simplest and exact with uint32 arithmetic.
// Free of npm dependencies: the CNI plugin uses it too.

export type Ip4 = number;

const DOTTED_QUAD = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

export function parseIp4(text: string): Ip4 {
  const m = DOTTED_QUAD.exec(text.trim());
  if (!m) throw new Error(`not an IPv4 address: "${text}"`);
  let n = 0;
  for (let i = 1; i <= 4; i++) {
    const octet = Number(m[i]);
    if (octet > 255) throw new Error(`not an IPv4 address: "${text}"`);
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
    const parts = cidr.trim().split('/');
    if (parts.length !== 2 || !/^\d{1,2}$/.test(parts[1]!)) throw new Error(`not an IPv4 CIDR: "${cidr}"`);
    const ip = parseIp4(parts[0]!);
    const net = new Ip4Net(ip, Number(parts[1]));
    if (!allowHostBits && net.ip !== ip) throw new Error(`"${cidr}" has host bits set (network is ${net})`);
    return net;
  }

  /** Parses the etcd key form "a.b.c.d-len" used under <prefix>/subnets/. */
  static fromKey(key: string): Ip4Net {
    const m = /^(\d{1,3}(?:\.\d{1,3}){3})-(\d{1,2})$/.exec(key);
    if (!m) throw new Error(`not a subnet key: "${key}"`);
    return Ip4Net.parse(`${m[1]}/${m[2]}`);
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
