// The IPv6 half of a dual-stack network config, in upstream's keys and with upstream's defaults:
// EnableIPv6, IPv6Network, IPv6SubnetLen (64 when the network leaves room, else network + 2),
// IPv6SubnetMin and IPv6SubnetMax (the second and the last subnet). Kept apart from config.ts so the
// IPv4 rules there stay as they are.
import { Ip6Net, type Ip6, formatIp6, parseIp6 } from '../common/ip6.js';

export interface Ip6NetworkConfig {
  network: Ip6Net;
  subnetLen: number;
  subnetMin: Ip6;
  subnetMax: Ip6;
}

/** What the caller throws: the field at fault and why (config.ts wraps it in its ConfigError). */
export class Ipv6ConfigError extends Error {
  constructor(
    readonly field: string,
    readonly reason: string,
  ) {
    super(`${field}: ${reason}`);
  }
}

type Json = Record<string, unknown>;

function optionalIp6(raw: Json, key: string): Ip6 | undefined {
  const v = raw[key];
  if (v === undefined || v === null || v === '') return undefined;
  if (typeof v !== 'string') throw new Ipv6ConfigError(key, `must be an IPv6 address string, got ${JSON.stringify(v)}`);
  try {
    return parseIp6(v);
  } catch {
    throw new Ipv6ConfigError(key, `"${v}" is not an IPv6 address`);
  }
}

/** The IPv6 config, or null when EnableIPv6 is not true (IPv6 keys are then ignored, as upstream does). */
export function parseIpv6Config(raw: Json): Ip6NetworkConfig | null {
  const enable = raw['EnableIPv6'];
  if (enable !== undefined && enable !== null && typeof enable !== 'boolean') {
    throw new Ipv6ConfigError('EnableIPv6', `must be true or false, got ${JSON.stringify(enable)}`);
  }
  if (enable !== true) return null;

  const text = raw['IPv6Network'];
  if (text === undefined || text === null || text === '') throw new Ipv6ConfigError('IPv6Network', 'is required when EnableIPv6 is true');
  if (typeof text !== 'string') throw new Ipv6ConfigError('IPv6Network', 'must be a CIDR string such as "2001:db8:1::/48"');
  let network: Ip6Net;
  try {
    network = Ip6Net.parse(text, true); // host bits masked, as for Network
  } catch (err) {
    throw new Ipv6ConfigError('IPv6Network', (err as Error).message);
  }

  const lenRaw = raw['IPv6SubnetLen'];
  let subnetLen: number;
  if (lenRaw === undefined || lenRaw === null || lenRaw === 0) {
    if (network.prefixLen > 126) throw new Ipv6ConfigError('IPv6Network', `${network} is too small: the smallest usable network is a /126`);
    subnetLen = network.prefixLen <= 62 ? 64 : network.prefixLen + 2;
  } else {
    if (typeof lenRaw !== 'number' || !Number.isInteger(lenRaw)) throw new Ipv6ConfigError('IPv6SubnetLen', `must be an integer, got ${JSON.stringify(lenRaw)}`);
    subnetLen = lenRaw;
    if (subnetLen < 1 || subnetLen > 126) throw new Ipv6ConfigError('IPv6SubnetLen', `must be between 1 and 126, got ${subnetLen}`);
    if (subnetLen < network.prefixLen + 2) {
      throw new Ipv6ConfigError('IPv6SubnetLen', `IPv6Network ${network} is too small for /${subnetLen} subnets: it must hold at least four (IPv6SubnetLen >= ${network.prefixLen + 2})`);
    }
  }

  const size = 1n << BigInt(128 - subnetLen);
  const bound = (key: 'IPv6SubnetMin' | 'IPv6SubnetMax', fallback: Ip6): Ip6 => {
    const ip = optionalIp6(raw, key);
    if (ip === undefined) return fallback;
    if (!network.contains(ip)) throw new Ipv6ConfigError(key, `${formatIp6(ip)} is not inside IPv6Network ${network}`);
    if (new Ip6Net(ip, subnetLen).ip !== ip) throw new Ipv6ConfigError(key, `${formatIp6(ip)} is not on a /${subnetLen} boundary`);
    return ip;
  };
  const subnetMin = bound('IPv6SubnetMin', network.ip + size);
  const subnetMax = bound('IPv6SubnetMax', network.last + 1n - size);
  if (subnetMin > subnetMax) throw new Ipv6ConfigError('IPv6SubnetMin', `${formatIp6(subnetMin)} is above IPv6SubnetMax ${formatIp6(subnetMax)}`);
  return { network, subnetLen, subnetMin, subnetMax };
}

/** A subnet a node may lease under this IPv6 config. */
export function isIpv6Candidate(subnet: Ip6Net, c: Ip6NetworkConfig): boolean {
  return subnet.prefixLen === c.subnetLen && subnet.ip >= c.subnetMin && subnet.ip <= c.subnetMax;
}

/** The IPv6 subnets a node may lease, in address order (lazily: a /32 of /64s is 2^32 of them). */
export function* candidateIpv6Subnets(c: Ip6NetworkConfig): Generator<Ip6Net> {
  for (let sn: Ip6Net | null = new Ip6Net(c.subnetMin, c.subnetLen); sn !== null && sn.ip <= c.subnetMax; sn = sn.next()) yield sn;
}
