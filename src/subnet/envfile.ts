// The subnet env file that Docker (--bip/--mtu via docker-opts) and the CNI plugin read, in upstream's
// format. The one reader and writer of it: the daemon, the CNI plugin and `flannelctl docker-opts` all
// parse it here, with the same strictness. Its only npm dependency is ipaddr.js (through ip6.ts), which
// the CNI plugin's copy of dist/ takes along.
import { readFileSync } from 'node:fs';
import { writeFileAtomic } from '../common/atomic-file.js';
import { quoted } from '../common/printable.js';
import { Ip4Net, formatIp4 } from '../common/ip4.js';
import { Ip6Net } from '../common/ip6.js';

export const DEFAULT_SUBNET_FILE = '/run/flannel/subnet.env';

export interface SubnetEnv {
  /** FLANNEL_NETWORK; a comma-separated list is read too (later upstream versions write one). */
  networks: Ip4Net[];
  /** This node's subnet (FLANNEL_SUBNET with its host part, the bridge address, cleared). */
  subnet: Ip4Net;
  mtu: number;
  ipMasq: boolean;
  /** Dual stack: FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET (host part cleared); absent otherwise. */
  ipv6Network?: Ip6Net | null;
  ipv6Subnet?: Ip6Net | null;
}

/** Why an env file cannot be used: `missing` when the file does not exist, `invalid` otherwise. */
export class SubnetEnvError extends Error {
  constructor(
    message: string,
    readonly kind: 'missing' | 'unreadable' | 'invalid',
    /** The variables the file lacks, when that is what is wrong. */
    readonly missingVars: string[] = [],
  ) {
    super(message);
    this.name = 'SubnetEnvError';
  }
}

/** The bridge's address: the subnet's first host address, with the subnet's prefix (FLANNEL_SUBNET). */
export function bridgeAddress(subnet: Ip4Net): string {
  return `${formatIp4(subnet.ip + 1)}/${subnet.prefixLen}`;
}

/** Upstream's order: the IPv6 lines follow the IPv4 ones; FLANNEL_IPV6_SUBNET is the `::1` address, as FLANNEL_SUBNET is `.1`. */
export function formatSubnetEnv(env: SubnetEnv): string {
  return [
    `FLANNEL_NETWORK=${env.networks.join(',')}`,
    `FLANNEL_SUBNET=${bridgeAddress(env.subnet)}`,
    ...(env.ipv6Network ? [`FLANNEL_IPV6_NETWORK=${env.ipv6Network}`] : []),
    ...(env.ipv6Subnet ? [`FLANNEL_IPV6_SUBNET=${env.ipv6Subnet.firstHostCidr()}`] : []),
    `FLANNEL_MTU=${env.mtu}`,
    `FLANNEL_IPMASQ=${env.ipMasq}`,
    '',
  ].join('\n');
}

export function writeSubnetEnvFile(path: string, env: SubnetEnv): void {
  writeFileAtomic(path, formatSubnetEnv(env));
}

/**
 * Parses KEY=VALUE lines (shell-style quotes stripped); comments and blank lines ignored. Only the
 * blanks a shell would drop (space, tab, a CR from an edited file) are trimmed: a no-break or other
 * Unicode space stays in the value, where the strict parsers refuse it as the shell would keep it.
 */
export function parseEnvText(text: string): Record<string, string> {
  const vars: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^[ \t]*(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*)=([^]*)$/.exec(line); // [^]: a CR or U+2028 stays in the value
    if (!m) continue;
    vars[m[1]!] = m[2]!.replace(/^[ \t\r]+|[ \t\r]+$/g, '').replace(/^"(.*)"$/, '$1').replace(/^'(.*)'$/, '$1');
  }
  return vars;
}

/** Parses an env file's text written by us or upstream; throws naming the variable that is missing or wrong. */
export function parseSubnetEnv(text: string, source: string): SubnetEnv {
  const vars = parseEnvText(text);
  const missing = ['FLANNEL_NETWORK', 'FLANNEL_SUBNET', 'FLANNEL_MTU', 'FLANNEL_IPMASQ'].filter((k) => !vars[k]);
  if (missing.length > 0) throw new SubnetEnvError(`${source}: ${missing.map((k) => `${k} is missing`).join('; ')}`, 'invalid', missing);
  const bad = (key: string, why: string) => new SubnetEnvError(`${source}: ${key}=${quoted(vars[key] ?? '')} ${why}`, 'invalid');
  const networks: Ip4Net[] = [];
  for (const part of vars['FLANNEL_NETWORK']!.split(',')) {
    try {
      networks.push(Ip4Net.parse(part, true));
    } catch {
      throw bad('FLANNEL_NETWORK', 'is not an IPv4 CIDR (or a comma-separated list of them)');
    }
  }
  let subnet: Ip4Net;
  try {
    subnet = Ip4Net.parse(vars['FLANNEL_SUBNET']!, true);
  } catch {
    throw bad('FLANNEL_SUBNET', 'is not an IPv4 address/prefix');
  }
  const mtuText = vars['FLANNEL_MTU']!;
  const mtu = Number(mtuText);
  if (!/^\d+$/.test(mtuText) || mtu < 68 || mtu > 65535) throw bad('FLANNEL_MTU', 'is not an MTU (68-65535)');
  const masq = vars['FLANNEL_IPMASQ']!;
  if (masq !== 'true' && masq !== 'false') throw bad('FLANNEL_IPMASQ', 'is not true or false');
  const v6 = (key: string): Ip6Net | null => {
    if (!vars[key]) return null;
    try {
      return Ip6Net.parse(vars[key]!, true);
    } catch {
      throw bad(key, 'is not an IPv6 address/prefix');
    }
  };
  const ipv6Network = v6('FLANNEL_IPV6_NETWORK');
  const ipv6Subnet = v6('FLANNEL_IPV6_SUBNET');
  if ((ipv6Network === null) !== (ipv6Subnet === null)) {
    throw new SubnetEnvError(`${source}: FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET come together (dual stack), one is missing`, 'invalid');
  }
  return { networks, subnet, mtu, ipMasq: masq === 'true', ...(ipv6Network && ipv6Subnet ? { ipv6Network, ipv6Subnet } : {}) };
}

/** Reads and parses an env file; a missing file is a SubnetEnvError of kind `missing`. */
export function readSubnetEnvFile(path: string): SubnetEnv {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new SubnetEnvError(`subnet file ${path} does not exist (flanneld writes it once it holds a subnet lease)`, 'missing');
    }
    throw new SubnetEnvError(`cannot read subnet file ${path}: ${(err as Error).message}`, 'unreadable');
  }
  return parseSubnetEnv(text, path);
}

/** The subnet recorded by a previous run, or null when there is no usable file. */
export function previousSubnet(path: string): Ip4Net | null {
  try {
    return readSubnetEnvFile(path).subnet;
  } catch {
    return null;
  }
}

/** The IPv6 subnet recorded by a previous dual-stack run, or null. */
export function previousIpv6Subnet(path: string): Ip6Net | null {
  try {
    return readSubnetEnvFile(path).ipv6Subnet ?? null;
  } catch {
    return null;
  }
}
