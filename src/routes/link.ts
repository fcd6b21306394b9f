// Links: create a vxlan device (IPv4 or IPv6 underlay), read any link back from `ip -d -json link
// show`, read its state and addresses (both families) from `ip -json addr show`, set it up/MTU/MAC, delete it.
// Builders return argv words for ip() or ipBatch(); readers parse iproute2's JSON.
import { parseIp4 } from '../common/ip4.js';
import { parseIp6 } from '../common/ip6.js';
import type { Family, IpAddr } from './entries.js';
import { ipJson, IpCommandError, type IpOptions } from './ip.js';
import { deviceWord, ipWord, macWord, numberWord } from './words.js';

export interface AddrEntry {
  family: Family;
  ip: IpAddr;
  prefixLen: number;
  /** "addr/len" as the kernel prints it. */
  cidr: string;
  /** "global", "link" (IPv6 link-local), "host". */
  scope: string;
}

interface RawAddrInfo {
  family: string;
  local: string;
  prefixlen: number;
  scope?: string;
}

/** An address of `ip -json addr show`, typed; null for another family (e.g. a link-layer one). */
function parseAddrInfo(a: RawAddrInfo): AddrEntry | null {
  if (a.family !== 'inet' && a.family !== 'inet6') return null;
  const family = a.family === 'inet' ? 4 : 6;
  return { family, ip: family === 4 ? parseIp4(a.local) : parseIp6(a.local), prefixLen: a.prefixlen, cidr: `${a.local}/${a.prefixlen}`, scope: a.scope ?? 'global' };
}

export interface VxlanSpec {
  name: string;
  vni: number;
  /** Tunnel source address (IPv4 or IPv6: the device's family). */
  local: string;
  /** Underlay device the tunnel is bound to. */
  dev: string;
  /** UDP destination port. */
  port: number;
  learning: boolean;
  gbp: boolean;
  mtu?: number;
  /** MAC address; the kernel picks a random one when absent. */
  address?: string;
}

/** A vxlan device's attributes as the kernel reports them. */
export interface VxlanAttrs {
  vni: number;
  /** The tunnel source, IPv4 or IPv6. */
  local: string | null;
  dev: string | null;
  port: number;
  learning: boolean;
  gbp: boolean;
}

export interface LinkInfo {
  ifindex: number;
  name: string;
  kind: string | null;
  mtu: number;
  address: string;
  up: boolean;
  /** Set when kind is vxlan. */
  vxlan: VxlanAttrs | null;
}

interface RawLink {
  ifindex: number;
  ifname: string;
  mtu: number;
  address?: string;
  flags?: string[];
  linkinfo?: { info_kind?: string; info_data?: Record<string, unknown> };
}

export function vxlanAddCommand(spec: VxlanSpec): string[] {
  return [
    'link', 'add', deviceWord(spec.name),
    ...(spec.mtu !== undefined ? ['mtu', numberWord(spec.mtu)] : []),
    ...(spec.address !== undefined ? ['address', macWord(spec.address)] : []),
    'type', 'vxlan', 'id', numberWord(spec.vni), 'local', ipWord(spec.local), 'dev', deviceWord(spec.dev),
    'dstport', numberWord(spec.port), spec.learning ? 'learning' : 'nolearning',
    ...(spec.gbp ? ['gbp'] : []),
  ];
}

export function linkSetCommand(name: string, change: { up?: boolean; mtu?: number; address?: string }): string[] {
  return [
    'link', 'set', 'dev', deviceWord(name),
    ...(change.mtu !== undefined ? ['mtu', numberWord(change.mtu)] : []),
    ...(change.address !== undefined ? ['address', macWord(change.address)] : []),
    ...(change.up === undefined ? [] : [change.up ? 'up' : 'down']),
  ];
}

export function linkDeleteCommand(name: string): string[] {
  return ['link', 'del', 'dev', deviceWord(name)];
}

function parseVxlan(data: Record<string, unknown>): VxlanAttrs {
  // iproute2 prints an IPv6 tunnel source as "local6".
  const local = data['local'] ?? data['local6'];
  return {
    vni: Number(data['id']),
    local: typeof local === 'string' ? local : null,
    dev: typeof data['link'] === 'string' ? data['link'] : null,
    port: Number(data['port'] ?? 0),
    learning: data['learning'] === true,
    gbp: data['gbp'] === true,
  };
}

function parseLink(raw: RawLink): LinkInfo {
  const kind = raw.linkinfo?.info_kind ?? null;
  return {
    ifindex: raw.ifindex,
    name: raw.ifname,
    kind,
    mtu: raw.mtu,
    address: (raw.address ?? '').toLowerCase(),
    up: raw.flags?.includes('UP') ?? false,
    vxlan: kind === 'vxlan' && raw.linkinfo?.info_data ? parseVxlan(raw.linkinfo.info_data) : null,
  };
}

function missing(err: unknown): boolean {
  return err instanceof IpCommandError && /does not exist|Cannot find device/.test(err.stderr);
}

/** The named link with its details, or null when it does not exist. */
export async function readLink(name: string, opts: IpOptions = {}): Promise<LinkInfo | null> {
  try {
    const [raw] = await ipJson<RawLink>(['-d', 'link', 'show', 'dev', deviceWord(name)], opts);
    return raw ? parseLink(raw) : null;
  } catch (err) {
    if (missing(err)) return null;
    throw err;
  }
}

export interface LinkState {
  ifindex: number;
  up: boolean;
  mtu: number;
  /** Its MAC, lower case. */
  mac: string;
  addrs: AddrEntry[];
}

/** The named link's state, MAC and addresses (both families) from one `ip addr show`; null when it does not exist. */
export async function readLinkState(name: string, opts: IpOptions = {}): Promise<LinkState | null> {
  try {
    const [raw] = await ipJson<RawLink & { addr_info?: RawAddrInfo[] }>(['addr', 'show', 'dev', deviceWord(name)], opts);
    if (!raw) return null;
    const addrs = (raw.addr_info ?? []).map(parseAddrInfo).filter((a): a is AddrEntry => a !== null);
    return { ifindex: raw.ifindex, up: raw.flags?.includes('UP') ?? false, mtu: raw.mtu, mac: (raw.address ?? '').toLowerCase(), addrs };
  } catch (err) {
    if (missing(err)) return null;
    throw err;
  }
}

/** Why an existing vxlan device cannot be kept for `want` (empty list: it can). */
export function vxlanMismatches(have: LinkInfo, want: VxlanSpec): string[] {
  if (!have.vxlan) return [`kind is ${have.kind ?? 'unknown'}, not vxlan`];
  const v = have.vxlan;
  const out: string[] = [];
  if (v.vni !== want.vni) out.push(`vni ${v.vni} != ${want.vni}`);
  if (v.local !== want.local) out.push(`local ${v.local ?? 'unset'} != ${want.local}`);
  if (v.dev !== want.dev) out.push(`dev ${v.dev ?? 'unset'} != ${want.dev}`);
  if (v.port !== want.port) out.push(`dstport ${v.port} != ${want.port}`);
  if (v.learning !== want.learning) out.push(`learning ${v.learning} != ${want.learning}`);
  if (v.gbp !== want.gbp) out.push(`gbp ${v.gbp} != ${want.gbp}`);
  return out;
}
