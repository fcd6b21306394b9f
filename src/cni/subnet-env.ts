// Reads flanneld's subnet env file for the CNI plugin. Kept free of npm dependencies so the plugin,
// which the container runtime starts for every pod, loads fast and can be copied onto a host alone.
import { readFileSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import { CNI_ERR, CniError } from './errors.js';

export interface Cidr4 {
  /** Dotted quad with host bits cleared. */
  network: string;
  prefixLen: number;
}

export interface FlannelSubnetEnv {
  /** FLANNEL_NETWORK; a comma-separated list is accepted (later upstream versions write one). */
  networks: Cidr4[];
  /** FLANNEL_SUBNET as a network (its host part, the bridge address, cleared). */
  subnet: Cidr4;
  mtu: number;
  ipMasq: boolean;
}

export function cidrToString(c: Cidr4): string {
  return `${c.network}/${c.prefixLen}`;
}

function toUint32(dotted: string): number {
  return dotted.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
}

function toDotted(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** The first host address of a network: host-local's default gateway, the bridge's address. */
export function firstHost(c: Cidr4): string {
  return toDotted((toUint32(c.network) + 1) >>> 0);
}

/** Parses "a.b.c.d/len", allowing host bits, which are cleared. Returns null when malformed. */
export function parseCidr4(text: string): Cidr4 | null {
  const m = /^([0-9.]+)\/(\d{1,2})$/.exec(text.trim());
  if (!m || !isIPv4(m[1]!)) return null;
  const prefixLen = Number(m[2]);
  if (prefixLen > 32) return null;
  const mask = prefixLen === 0 ? 0 : (0xffffffff << (32 - prefixLen)) >>> 0;
  return { network: toDotted((toUint32(m[1]!) & mask) >>> 0), prefixLen };
}

/** KEY=VALUE lines as written by flanneld (ours or upstream's); surrounding quotes are tolerated. */
export function parseEnvLines(text: string): Map<string, string> {
  const vars = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (m) vars.set(m[1]!, m[2]!.trim().replace(/^"(.*)"$/, '$1').replace(/^'(.*)'$/, '$1'));
  }
  return vars;
}

export function parseFlannelSubnetEnv(text: string, path: string): FlannelSubnetEnv {
  const vars = parseEnvLines(text);
  const missing = ['FLANNEL_NETWORK', 'FLANNEL_SUBNET', 'FLANNEL_MTU', 'FLANNEL_IPMASQ'].filter((k) => !vars.get(k));
  if (missing.length > 0) {
    throw new CniError(CNI_ERR.invalidNetworkConfig, `${path} is missing ${missing.join(', ')}`);
  }
  const bad = (key: string, why: string): CniError =>
    new CniError(CNI_ERR.invalidNetworkConfig, `${path}: ${key}="${vars.get(key)}" ${why}`);
  const networks: Cidr4[] = [];
  for (const text of vars.get('FLANNEL_NETWORK')!.split(',')) {
    const n = parseCidr4(text);
    if (!n) throw bad('FLANNEL_NETWORK', 'is not an IPv4 CIDR (or a comma-separated list of them)');
    networks.push(n);
  }
  const subnet = parseCidr4(vars.get('FLANNEL_SUBNET')!);
  if (!subnet) throw bad('FLANNEL_SUBNET', 'is not an IPv4 address/prefix');
  const mtuText = vars.get('FLANNEL_MTU')!;
  const mtu = Number(mtuText);
  if (!/^\d+$/.test(mtuText) || mtu < 68 || mtu > 65535) throw bad('FLANNEL_MTU', 'is not an MTU (68-65535)');
  const masq = vars.get('FLANNEL_IPMASQ')!;
  if (masq !== 'true' && masq !== 'false') throw bad('FLANNEL_IPMASQ', 'is not true or false');
  return { networks, subnet, mtu, ipMasq: masq === 'true' };
}

export function readFlannelSubnetEnv(path: string): FlannelSubnetEnv {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      // flanneld writes the file once it holds a lease: until then the runtime should simply retry.
      throw new CniError(
        CNI_ERR.tryAgainLater,
        `subnet file ${path} does not exist: is flanneld running on this node (it writes the file once it holds a subnet lease)?`,
      );
    }
    throw new CniError(CNI_ERR.ioFailure, `cannot read subnet file ${path}: ${(err as Error).message}`);
  }
  return parseFlannelSubnetEnv(text, path);
}
