// Links: create a vxlan device, read any link back from `ip -d -json link show`, set it up/MTU/MAC,
// delete it. Builders return argv words for ip() or ipBatch(); readers parse iproute2's JSON.
import { ipJson, IpCommandError, type IpOptions } from './ip.js';
import { deviceWord, ipWord, macWord, numberWord } from './words.js';

export interface VxlanSpec {
  name: string;
  vni: number;
  /** Tunnel source address. */
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
  return {
    vni: Number(data['id']),
    local: typeof data['local'] === 'string' ? data['local'] : null,
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

/** The named link with its details, or null when it does not exist. */
export async function readLink(name: string, opts: IpOptions = {}): Promise<LinkInfo | null> {
  try {
    const [raw] = await ipJson<RawLink>(['-d', 'link', 'show', 'dev', name], opts);
    return raw ? parseLink(raw) : null;
  } catch (err) {
    if (err instanceof IpCommandError && /does not exist|Cannot find device/.test(err.stderr)) return null;
    throw err;
  }
}

/** The named link's state and its IPv4 addresses ("a.b.c.d/len") from one `ip addr show`; null when it does not exist. */
export async function readLinkAddrs(name: string, opts: IpOptions = {}): Promise<{ ifindex: number; up: boolean; ip4: string[] } | null> {
  try {
    const [raw] = await ipJson<RawLink & { addr_info?: { family: string; local: string; prefixlen: number }[] }>(['addr', 'show', 'dev', deviceWord(name)], opts);
    if (!raw) return null;
    return { ifindex: raw.ifindex, up: raw.flags?.includes('UP') ?? false, ip4: (raw.addr_info ?? []).filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`) };
  } catch (err) {
    if (err instanceof IpCommandError && /does not exist|Cannot find device/.test(err.stderr)) return null;
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
