// The network config stored at <prefix>/config, in upstream flannel's JSON, with upstream's defaults.
// Every rejection names the field at fault so that an operator can fix it with one etcdctl put.
import { type Ip4, Ip4Net, formatIp4, parseIp4 } from '../common/ip4.js';
import { type Ip6NetworkConfig, Ipv6ConfigError, parseIpv6Config } from './config-ipv6.js';
import { formatIp6 } from '../common/ip6.js';
import { wgKeyProblem } from '../common/wg-key.js';

export type { Ip6NetworkConfig } from './config-ipv6.js';

export interface VxlanBackendConfig {
  type: 'vxlan';
  vni: number;
  port: number;
  gbp: boolean;
  directRouting: boolean;
  /** Backend.MTU as upstream defines it: the MTU the encapsulation is taken from (the devices get MTU - 50); null: the underlay's. */
  mtu: number | null;
}

export interface UdpBackendConfig {
  type: 'udp';
  port: number;
}

/** host-gw takes no options: a route per peer via its PublicIP (and PublicIPv6). */
export interface HostGwBackendConfig {
  type: 'host-gw';
}


/** Upstream's wireguard modes: one device per family, or one device for both (endpoint by family or chosen). */
export const WIREGUARD_MODES = ['separate', 'auto', 'ipv4', 'ipv6'] as const;
export type WireguardMode = (typeof WIREGUARD_MODES)[number];

/** The wireguard backend's keys, with upstream's defaults. */
export interface WireguardBackendConfig {
  type: 'wireguard';
  /** UDP port of flannel-wg (51820). */
  listenPort: number;
  /** UDP port of flannel-wg-v6 (51821), the IPv6 device of `separate` mode. */
  listenPortV6: number;
  /** The MTU WireGuard's 80 bytes of overhead are taken from (upstream's meaning); null = the underlay's. */
  mtu: number | null;
  /** The preshared key every peer gets, canonical base64 of 32 bytes; null for none. */
  psk: string | null;
  /** Seconds between keepalives to each idle peer; 0 = off. */
  persistentKeepaliveInterval: number;
  mode: WireguardMode;
}

export type BackendConfig = VxlanBackendConfig | UdpBackendConfig | HostGwBackendConfig | WireguardBackendConfig;

export interface NetworkConfig {
  network: Ip4Net;
  subnetLen: number;
  subnetMin: Ip4;
  subnetMax: Ip4;
  backend: BackendConfig;
  /** Dual stack (EnableIPv6): the IPv6 network and its subnets; absent or null for IPv4 only. */
  ipv6?: Ip6NetworkConfig | null;
  /** EnableNFTables: the node's masquerade and forward rules go into nftables tables instead of iptables chains. */
  enableNFTables?: boolean;
}

export class ConfigError extends Error {
  constructor(
    readonly field: string,
    readonly reason: string,
  ) {
    super(`invalid network config: ${field}: ${reason}`);
    this.name = 'ConfigError';
  }
}

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

// Every key upstream's config structs know. Upstream decodes with Go's encoding/json, which matches
// keys case-insensitively ("network" is Network) and lets a later key win; keys it does not know are
// ignored. We match the same way, and report unknown keys (a misspelt "SubnetLenn") instead of
// ignoring them silently.
const TOP_LEVEL_KEYS = [
  'Network', 'SubnetLen', 'SubnetMin', 'SubnetMax', 'Backend',
  'EnableIPv4', 'EnableIPv6', 'EnableNFTables', 'IPv6Network', 'IPv6SubnetLen', 'IPv6SubnetMin', 'IPv6SubnetMax', 'Networks', 'IPv6Networks',
] as const;
const BACKEND_KEYS: Record<string, readonly string[]> = {
  udp: ['Type', 'Port'],
  vxlan: ['Type', 'VNI', 'Port', 'GBP', 'DirectRouting', 'MTU', 'Learning', 'MacPrefix'],
  'host-gw': ['Type'],
  wireguard: ['Type', 'PSK', 'ListenPort', 'ListenPortV6', 'MTU', 'PersistentKeepaliveInterval', 'Mode'],
};

const SUPPORTED = Object.keys(BACKEND_KEYS).join(', ');

/** WireGuard's overhead per packet, as upstream counts it: IPv6 header 40, UDP 8, its own 32. */
export const WIREGUARD_OVERHEAD = 80;

/**
 * The object with its keys renamed to their canonical spelling, as Go would match them (a later
 * key wins); keys outside `known` are returned in `unknown`, prefixed with `path`.
 */
function canonicalKeys(obj: Json, known: readonly string[], path: string): { fields: Json; unknown: string[] } {
  const byLower = new Map(known.map((k) => [k.toLowerCase(), k]));
  const fields: Json = {};
  const unknown: string[] = [];
  for (const [key, value] of Object.entries(obj)) {
    const canonical = byLower.get(key.toLowerCase());
    if (canonical === undefined) unknown.push(path + key);
    else fields[canonical] = value;
  }
  return { fields, unknown };
}

function optionalInt(obj: Json, key: string, field: string, min: number, max: number): number | undefined {
  const v = obj[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new ConfigError(field, `must be an integer, got ${JSON.stringify(v)}`);
  if (v < min || v > max) throw new ConfigError(field, `must be between ${min} and ${max}, got ${v}`);
  return v;
}

function optionalBool(obj: Json, key: string, field: string): boolean | undefined {
  const v = obj[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw new ConfigError(field, `must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

function optionalIp(obj: Json, key: string): Ip4 | undefined {
  const v = obj[key];
  if (v === undefined || v === null || v === '') return undefined;
  if (typeof v !== 'string') throw new ConfigError(key, `must be an IPv4 address string, got ${JSON.stringify(v)}`);
  try {
    return parseIp4(v);
  } catch {
    throw new ConfigError(key, `"${v}" is not an IPv4 address`);
  }
}

/**
 * The wireguard backend's keys (`raw` with canonical key names), upstream's defaults filled in.
 * `ipv6`: the network is dual stack. Throws ConfigError naming the field; never quotes the PSK.
 */
export function parseWireguardBackend(raw: Json, ipv6: boolean): WireguardBackendConfig {
  const mode = raw['Mode'] ?? 'separate';
  if (typeof mode !== 'string' || !(WIREGUARD_MODES as readonly string[]).includes(mode)) {
    throw new ConfigError('Backend.Mode', `must be one of ${WIREGUARD_MODES.join(', ')} (as upstream spells them), got ${JSON.stringify(mode)}`);
  }
  if (mode === 'ipv6' && !ipv6) throw new ConfigError('Backend.Mode', 'ipv6 sends to the peers\' IPv6 addresses: it needs EnableIPv6 and IPv6Network');
  let psk: string | null = null;
  const pskValue = raw['PSK'];
  if (pskValue !== undefined && pskValue !== null && pskValue !== '') {
    const problem = wgKeyProblem(pskValue);
    if (problem !== null) throw new ConfigError('Backend.PSK', `not a WireGuard key (make one with \`wg genpsk\`): ${problem}`);
    psk = pskValue as string;
  }
  const listenPort = optionalInt(raw, 'ListenPort', 'Backend.ListenPort', 1, 65535) ?? 51820;
  const listenPortV6 = optionalInt(raw, 'ListenPortV6', 'Backend.ListenPortV6', 1, 65535) ?? 51821;
  if (ipv6 && mode === 'separate' && listenPortV6 === listenPort) {
    throw new ConfigError('Backend.ListenPortV6', `must differ from ListenPort (${listenPort}): separate mode runs a device per family, each on its own port`);
  }
  // The device gets MTU - 80, which must carry an IPv4 packet (68), or an IPv6 one (1280) in a dual-stack network.
  const minMtu = (ipv6 ? 1280 : 68) + WIREGUARD_OVERHEAD;
  const mtu = optionalInt(raw, 'MTU', 'Backend.MTU', minMtu, 65535) ?? null;
  const keepalive = optionalInt(raw, 'PersistentKeepaliveInterval', 'Backend.PersistentKeepaliveInterval', 0, 65535) ?? 0;
  return { type: 'wireguard', listenPort, listenPortV6, mtu, psk, persistentKeepaliveInterval: keepalive, mode: mode as WireguardMode };
}

function parseBackend(backend: unknown, unknown: string[], ipv6: boolean): BackendConfig {
  if (backend === undefined || backend === null) return { type: 'udp', port: 8285 }; // upstream's default backend
  if (!isObject(backend)) throw new ConfigError('Backend', 'must be a JSON object');
  const type = canonicalKeys(backend, ['Type'], '').fields['Type'] ?? 'udp';
  if (typeof type !== 'string') throw new ConfigError('Backend.Type', 'must be a string');
  const keys = BACKEND_KEYS[type.toLowerCase()];
  if (keys === undefined) throw new ConfigError('Backend.Type', `unknown backend "${type}" (supported: ${SUPPORTED})`);
  const { fields: raw, unknown: extra } = canonicalKeys(backend, keys, 'Backend.');
  unknown.push(...extra);
  switch (type.toLowerCase()) {
    case 'udp':
      return { type: 'udp', port: optionalInt(raw, 'Port', 'Backend.Port', 1, 65535) ?? 8285 };
    case 'vxlan':
      return {
        type: 'vxlan',
        vni: optionalInt(raw, 'VNI', 'Backend.VNI', 1, 0xffffff) ?? 1,
        port: optionalInt(raw, 'Port', 'Backend.Port', 1, 65535) ?? 8472,
        gbp: optionalBool(raw, 'GBP', 'Backend.GBP') ?? false,
        directRouting: optionalBool(raw, 'DirectRouting', 'Backend.DirectRouting') ?? false,
        mtu: optionalInt(raw, 'MTU', 'Backend.MTU', 68, 65535) ?? null,
      };
    case 'host-gw':
      return { type: 'host-gw' };
    case 'wireguard':
      return parseWireguardBackend(raw, ipv6);
    default:
      throw new ConfigError('Backend.Type', `unknown backend "${type}" (supported: ${SUPPORTED})`);
  }
}

/** Parses and validates the config JSON, applying upstream flannel's defaults. Throws ConfigError. */
export function parseNetworkConfig(text: string): NetworkConfig {
  return checkNetworkConfig(text).config;
}

/**
 * Parses and validates the config JSON like parseNetworkConfig, and also returns the keys upstream
 * would not know (e.g. "SubnetLenn", "Backend.VNII"): upstream ignores them, so they are never an
 * error, but they are usually a typo worth a warning.
 */
export function checkNetworkConfig(text: string): { config: NetworkConfig; unknownKeys: string[] } {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ConfigError('(json)', `not valid JSON: ${(err as Error).message}`);
  }
  if (!isObject(json)) throw new ConfigError('(json)', 'must be a JSON object');
  const { fields: raw, unknown: unknownKeys } = canonicalKeys(json, TOP_LEVEL_KEYS, '');

  // Upstream's keys for an IPv6-only network would need lease keys without an IPv4 part: not supported.
  if (raw['EnableIPv4'] === false) throw new ConfigError('EnableIPv4', 'IPv6-only networks are not supported: IPv4 must be enabled (dual stack: EnableIPv6 beside Network)');
  let ipv6: Ip6NetworkConfig | null;
  try {
    ipv6 = parseIpv6Config(raw);
  } catch (err) {
    if (err instanceof Ipv6ConfigError) throw new ConfigError(err.field, err.reason);
    throw err;
  }

  const networkText = raw['Network'];
  if (networkText === undefined || networkText === null || networkText === '') throw new ConfigError('Network', 'is required');
  if (typeof networkText !== 'string') throw new ConfigError('Network', 'must be a CIDR string such as "10.244.0.0/16"');
  let network: Ip4Net;
  try {
    // Upstream masks host bits ("10.244.0.1/16" means 10.244.0.0/16); a config it accepts must work here too.
    network = Ip4Net.parse(networkText, true);
  } catch (err) {
    throw new ConfigError('Network', (err as Error).message);
  }

  let subnetLen = optionalInt(raw, 'SubnetLen', 'SubnetLen', 0, 32) ?? 0;
  if (subnetLen > 0) {
    // Each node needs room for a bridge address and a gateway, and the network must hold at
    // least four subnets because the first one is never handed out.
    if (subnetLen > 30) throw new ConfigError('SubnetLen', `must be /30 or shorter, got /${subnetLen}`);
    if (subnetLen < network.prefixLen + 2) {
      throw new ConfigError('SubnetLen', `Network ${network} is too small for /${subnetLen} subnets: it must hold at least four (SubnetLen >= ${network.prefixLen + 2})`);
    }
  } else if (network.prefixLen > 28) {
    throw new ConfigError('Network', `${network} is too small: the smallest usable network is a /28`);
  } else {
    subnetLen = network.prefixLen <= 22 ? 24 : network.prefixLen + 2;
  }

  const subnetSize = 2 ** (32 - subnetLen);
  const checkBound = (key: 'SubnetMin' | 'SubnetMax', fallback: Ip4): Ip4 => {
    const ip = optionalIp(raw, key);
    if (ip === undefined) return fallback;
    if (!network.contains(ip)) throw new ConfigError(key, `${formatIp4(ip)} is not inside Network ${network}`);
    if (new Ip4Net(ip, subnetLen).ip !== ip) throw new ConfigError(key, `${formatIp4(ip)} is not on a /${subnetLen} boundary`);
    return ip;
  };
  // The first subnet is skipped by default: its network address would clash with the Network's own.
  const subnetMin = checkBound('SubnetMin', network.ip + subnetSize);
  const subnetMax = checkBound('SubnetMax', network.last + 1 - subnetSize);
  if (subnetMin > subnetMax) {
    throw new ConfigError('SubnetMin', `${formatIp4(subnetMin)} is above SubnetMax ${formatIp4(subnetMax)}`);
  }

  const backend = parseBackend(raw['Backend'], unknownKeys, ipv6 !== null);
  // As upstream: the udp backend carries IPv4 packets only.
  if (ipv6 && backend.type === 'udp') throw new ConfigError('EnableIPv6', 'the udp backend does not support IPv6 (as upstream): use vxlan or host-gw for dual stack');
  const enableNFTables = optionalBool(raw, 'EnableNFTables', 'EnableNFTables') ?? false;
  return { config: { network, subnetLen, subnetMin, subnetMax, backend, ...(ipv6 ? { ipv6 } : {}), ...(enableNFTables ? { enableNFTables } : {}) }, unknownKeys };
}

/**
 * The effective config in upstream's own keys and spelling, so that it can be pasted back with
 * `flannelctl config set` (or etcdctl) and read the same by this daemon and by upstream flanneld.
 */
export function formatNetworkConfig(c: NetworkConfig): Record<string, unknown> {
  const b = c.backend;
  const backend: Record<string, unknown> =
    b.type === 'udp'
      ? { Type: 'udp', Port: b.port }
      : b.type === 'host-gw'
        ? { Type: 'host-gw' }
        : b.type === 'vxlan'
          ? { Type: 'vxlan', VNI: b.vni, Port: b.port, GBP: b.gbp, DirectRouting: b.directRouting, ...(b.mtu === null ? {} : { MTU: b.mtu }) }
          : {
              // The PSK as stored: this is what `config set` takes back.
              Type: 'wireguard', ...(b.psk === null ? {} : { PSK: b.psk }), ListenPort: b.listenPort, ListenPortV6: b.listenPortV6,
              ...(b.mtu === null ? {} : { MTU: b.mtu }), PersistentKeepaliveInterval: b.persistentKeepaliveInterval, Mode: b.mode,
            };
  const ipv6 = c.ipv6
    ? {
        EnableIPv6: true,
        IPv6Network: c.ipv6.network.toString(),
        IPv6SubnetLen: c.ipv6.subnetLen,
        IPv6SubnetMin: formatIp6(c.ipv6.subnetMin),
        IPv6SubnetMax: formatIp6(c.ipv6.subnetMax),
      }
    : {};
  return {
    Network: c.network.toString(), SubnetLen: c.subnetLen, SubnetMin: formatIp4(c.subnetMin), SubnetMax: formatIp4(c.subnetMax), ...ipv6,
    ...(c.enableNFTables ? { EnableNFTables: true } : {}), Backend: backend,
  };
}

/** Every subnet a node may lease under this config, in address order. */
export function* candidateSubnets(config: NetworkConfig): Generator<Ip4Net> {
  for (let sn = new Ip4Net(config.subnetMin, config.subnetLen); sn.ip <= config.subnetMax; sn = sn.next()) {
    yield sn;
    if (sn.ip === config.subnetMax) return;
  }
}

/** True when two configs describe the same network and backend (a change of either needs a restart). */
export function sameNetwork(a: NetworkConfig, b: NetworkConfig): boolean {
  const bigints = (_key: string, v: unknown): unknown => (typeof v === 'bigint' ? v.toString() : v); // IPv6 addresses
  return JSON.stringify({ ...a, network: a.network.toString() }, bigints) === JSON.stringify({ ...b, network: b.network.toString() }, bigints);
}
