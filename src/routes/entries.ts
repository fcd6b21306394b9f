// Kernel table entries, typed once for both families: routes (unicast, or blackhole), neighbours,
// vxlan FDB entries, and WireGuard devices' settings and peers. Addresses are numbers (IPv4) or bigints (IPv6), MACs are canonical (lower-case
// colon form), devices are named. Every entry carries its table key — what makes two entries the
// same slot in the kernel — computed when it is made, so that diffs are Map lookups. The builders
// here make the entries the daemon wants; the readers (netlink.ts, iproute2.ts) make the same types
// from what the kernel holds.
import { type Ip4, Ip4Net, formatIp4 } from '../common/ip4.js';
import { type Ip6, Ip6Net, formatIp6 } from '../common/ip6.js';

export type Family = 4 | 6;
/** An address of either family: IPv4 as an unsigned 32-bit number, IPv6 as a bigint. */
export type IpAddr = Ip4 | Ip6;
export type IpNet = Ip4Net | Ip6Net;

/** The routing protocol number the kernel gives routes it makes itself (a device's prefix route). */
export const RTPROT_KERNEL = 2;
/** What `ip route replace` (and our rtnetlink writer) records as a route's protocol. */
export const RTPROT_BOOT = 3;

export interface RouteEntry {
  readonly kind: 'route';
  readonly key: string;
  /** The destination; its family is the route's. */
  readonly dst: IpNet;
  /** unicast: through `dev` (via `via` when set); blackhole: packets are dropped (no device). */
  readonly type: 'unicast' | 'blackhole';
  readonly via: IpAddr | null;
  readonly dev: string | null;
  /** The next hop is used as if it were on the device's link (vxlan's next hops are on no prefix). */
  readonly onlink: boolean;
  /** As read from the kernel (RTPROT_*); absent on the entries we want. Deletions name it, to hit only that route. */
  readonly protocol?: number;
  /** As read from the kernel; absent on the entries we want (the kernel's default metric). */
  readonly metric?: number;
}

export interface NeighEntry {
  readonly kind: 'neigh';
  readonly key: string;
  readonly dev: string;
  readonly ip: IpAddr;
  readonly mac: string;
  /** Never aged out or re-resolved. Ours always are; entries the kernel learned are not. */
  readonly permanent: boolean;
}

export interface FdbEntry {
  readonly kind: 'fdb';
  readonly key: string;
  readonly dev: string;
  readonly mac: string;
  /** The underlay address frames for `mac` are sent to. */
  readonly dst: IpAddr;
  readonly permanent: boolean;
}

/**
 * A WireGuard peer on a device (kernel module or wireguard-go), keyed by device and public key: who may
 * send what into the device (its allowed IPs), and where its packets go (its endpoint).
 */
export interface WgPeerEntry {
  readonly kind: 'wgpeer';
  readonly key: string;
  readonly dev: string;
  readonly publicKey: string;
  /** The addresses routed to the peer inside the device, and accepted from it; sorted by their text. */
  readonly allowedIPs: readonly IpNet[];
  /** Its underlay address and UDP port; null leaves the device's as it is (a roaming peer). */
  readonly endpoint: { readonly ip: IpAddr; readonly port: number } | null;
  /** Seconds between keepalives when idle; 0: off. */
  readonly keepalive: number;
  /**
   * Which preshared key (its fingerprint, wgKeyFingerprint); null for none. The key itself never travels
   * in an entry: the path that writes it holds it.
   */
  readonly psk: string | null;
}

/** A WireGuard device's own settings: the key pair it answers with (named by its public key) and its UDP port. */
export interface WgDeviceEntry {
  readonly kind: 'wgdev';
  readonly key: string;
  readonly dev: string;
  /** Null on a device with no private key (wireguard-go as it starts). */
  readonly publicKey: string | null;
  readonly listenPort: number;
}

/** An entry of the kernel's own tables, written through rtnetlink or iproute2. */
export type KernelEntry = RouteEntry | NeighEntry | FdbEntry;
/** A WireGuard device's configuration, written through wg(8) (the kernel module, or wireguard-go in user space). */
export type WgEntry = WgPeerEntry | WgDeviceEntry;
/** Everything a reconciler keeps: kernel table entries and WireGuard configuration. */
export type ReconciledEntry = KernelEntry | WgEntry;
export type EntryKind = ReconciledEntry['kind'];

export function isKernelEntry(e: ReconciledEntry): e is KernelEntry {
  return e.kind === 'route' || e.kind === 'neigh' || e.kind === 'fdb';
}

/** One change for the kernel (or a WireGuard device): put `entry` in (replacing what holds its key), or delete it. */
export interface KernelOp {
  readonly action: 'replace' | 'delete';
  readonly entry: ReconciledEntry;
  /** Who wants the entry (for logs: a backend's owner key, e.g. the peer's subnet); null for a deletion. */
  readonly owner: string | null;
}

export function familyOf(ip: IpAddr): Family {
  return typeof ip === 'bigint' ? 6 : 4;
}

export function netFamily(net: IpNet): Family {
  return typeof net.ip === 'bigint' ? 6 : 4;
}

export function formatIp(ip: IpAddr): string {
  return typeof ip === 'bigint' ? formatIp6(ip) : formatIp4(ip);
}

/** The network that holds exactly `ip` (/32 or /128). */
export function hostNet(ip: IpAddr): IpNet {
  return typeof ip === 'bigint' ? new Ip6Net(ip, 128) : new Ip4Net(ip, 32);
}

/** The same network (a network of the other family never is). */
export function sameNet(a: IpNet, b: IpNet): boolean {
  return a.ip === b.ip && a.prefixLen === b.prefixLen;
}

/** True when `net` lies inside `root` (and both are of one family). */
export function netInside(net: IpNet, root: IpNet): boolean {
  if (typeof net.ip === 'bigint') return root instanceof Ip6Net && root.covers(net as Ip6Net);
  return root instanceof Ip4Net && root.covers(net as Ip4Net);
}

export function routeKey(type: RouteEntry['type'], dst: string): string {
  return type === 'blackhole' ? `route blackhole ${dst}` : `route ${dst}`;
}

export function neighKey(dev: string, ip: string): string {
  return `neigh ${dev} ${ip}`;
}

export function fdbKey(dev: string, mac: string): string {
  return `fdb ${dev} ${mac}`;
}

export function wgPeerKey(dev: string, publicKey: string): string {
  return `wgpeer ${dev} ${publicKey}`;
}

export function wgDeviceKey(dev: string): string {
  return `wgdev ${dev}`;
}

/** A unicast route through `dev`, via `via` when given. */
export function unicastRoute(dst: IpNet, dev: string, via: IpAddr | null = null, opts: { onlink?: boolean } = {}): RouteEntry {
  return { kind: 'route', key: routeKey('unicast', dst.toString()), dst, type: 'unicast', via, dev, onlink: opts.onlink ?? false };
}

/** A blackhole route: what reaches `dst` and no more specific route is dropped. */
export function blackholeRoute(dst: IpNet): RouteEntry {
  return { kind: 'route', key: routeKey('blackhole', dst.toString()), dst, type: 'blackhole', via: null, dev: null, onlink: false };
}

/** A permanent neighbour entry: `ip` on `dev` is at `mac`. */
export function permanentNeighbour(dev: string, ip: IpAddr, mac: string): NeighEntry {
  return { kind: 'neigh', key: neighKey(dev, formatIp(ip)), dev, ip, mac, permanent: true };
}

/** A permanent FDB entry on a vxlan device: frames for `mac` go to `dst`. */
export function permanentFdb(dev: string, mac: string, dst: IpAddr): FdbEntry {
  return { kind: 'fdb', key: fdbKey(dev, mac), dev, mac, dst, permanent: true };
}

/** A WireGuard peer on `dev`; its allowed IPs are put in their one order. */
export function wgPeer(dev: string, publicKey: string, p: { allowedIPs: readonly IpNet[]; endpoint: WgPeerEntry['endpoint']; keepalive: number; psk: string | null }): WgPeerEntry {
  const allowedIPs = [...p.allowedIPs].sort((a, b) => (a.toString() < b.toString() ? -1 : a.toString() > b.toString() ? 1 : 0));
  return { kind: 'wgpeer', key: wgPeerKey(dev, publicKey), dev, publicKey, allowedIPs, endpoint: p.endpoint, keepalive: p.keepalive, psk: p.psk };
}

/** A WireGuard device's key pair (by its public key) and port. */
export function wgDevice(dev: string, publicKey: string | null, listenPort: number): WgDeviceEntry {
  return { kind: 'wgdev', key: wgDeviceKey(dev), dev, publicKey, listenPort };
}

function sameNets(a: readonly IpNet[], b: readonly IpNet[]): boolean {
  return a.length === b.length && a.every((n, i) => sameNet(n, b[i]!));
}

/** Two entries of one key hold the same (what the kernel reports beyond that, protocol and metric, aside). */
export function sameEntry(a: ReconciledEntry, b: ReconciledEntry): boolean {
  switch (a.kind) {
    case 'route':
      return b.kind === 'route' && a.type === b.type && a.via === b.via && a.dev === b.dev && a.onlink === b.onlink;
    case 'neigh':
      return b.kind === 'neigh' && a.mac === b.mac && a.permanent === b.permanent;
    case 'fdb':
      return b.kind === 'fdb' && a.dst === b.dst && a.permanent === b.permanent;
    case 'wgpeer':
      return (
        b.kind === 'wgpeer' && a.keepalive === b.keepalive && a.psk === b.psk && sameNets(a.allowedIPs, b.allowedIPs)
        && (a.endpoint === null ? b.endpoint === null : b.endpoint !== null && a.endpoint.ip === b.endpoint.ip && a.endpoint.port === b.endpoint.port)
      );
    case 'wgdev':
      return b.kind === 'wgdev' && a.publicKey === b.publicKey && a.listenPort === b.listenPort;
  }
}

/** "ip:port", or "[ip6]:port". */
export function endpointText(endpoint: { ip: IpAddr; port: number }): string {
  return typeof endpoint.ip === 'bigint' ? `[${formatIp6(endpoint.ip)}]:${endpoint.port}` : `${formatIp4(endpoint.ip)}:${endpoint.port}`;
}

/** The entry as `ip`/`bridge` would print it, for logs. */
export function describeEntry(e: ReconciledEntry): string {
  switch (e.kind) {
    case 'route':
      if (e.type === 'blackhole') return `blackhole ${e.dst}`;
      return `${e.dst}${e.via !== null ? ` via ${formatIp(e.via)}` : ''} dev ${e.dev}${e.onlink ? ' onlink' : ''}`;
    case 'neigh':
      return `${formatIp(e.ip)} lladdr ${e.mac} dev ${e.dev}${e.permanent ? ' permanent' : ''}`;
    case 'fdb':
      return `${e.mac} dev ${e.dev} dst ${formatIp(e.dst)}${e.permanent ? ' permanent' : ''}`;
    case 'wgpeer':
      return `peer ${e.publicKey} dev ${e.dev} allowed-ips ${e.allowedIPs.join(',') || '(none)'}${e.endpoint ? ` endpoint ${endpointText(e.endpoint)}` : ''}${e.keepalive ? ` keepalive ${e.keepalive}` : ''}${e.psk ? ' psk' : ''}`;
    case 'wgdev':
      return `${e.dev} public-key ${e.publicKey ?? '(none)'} listen-port ${e.listenPort}`;
  }
}

/**
 * Which family an entry belongs to (an FDB entry: its underlay destination's; a WireGuard peer: its
 * endpoint's, else its first allowed IP's; a WireGuard device's settings: counted as IPv4).
 */
export function entryFamily(e: ReconciledEntry): Family {
  switch (e.kind) {
    case 'route':
      return netFamily(e.dst);
    case 'neigh':
      return familyOf(e.ip);
    case 'fdb':
      return familyOf(e.dst);
    case 'wgpeer':
      return e.endpoint ? familyOf(e.endpoint.ip) : e.allowedIPs[0] ? netFamily(e.allowedIPs[0]) : 4;
    case 'wgdev':
      return 4;
  }
}
