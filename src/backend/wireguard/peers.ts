// What our lease says of our devices, and remote wireguard leases as WireGuard peers, as upstream
// flannel v0.28.9 programs them, per Mode:
// - separate: a peer on flannel-wg for the node's IPv4 subnet, at PublicIP and its BackendData.Port,
//   and (dual stack) a peer on flannel-wg-v6 for its IPv6 subnet, at PublicIPv6 and BackendV6Data.Port;
// - ipv4, ipv6, auto: one peer on flannel-wg for both subnets, at PublicIP (ipv4), PublicIPv6 (ipv6),
//   or whichever upstream's rule picks for that node (auto).
// A port a lease does not name (upstream before v0.22) is our own device's, as upstream reads it. Every
// peer gets the network's PSK and keepalive.
import { Ip4Net, parseIp4 } from '../../common/ip4.js';
import { Ip6Net, parseIp6 } from '../../common/ip6.js';
import { type IpNet, type WgPeerEntry, wgPeer } from '../../routes/entries.js';
import type { WireguardBackendConfig } from '../../subnet/config.js';
import type { Lease, LeaseBackend } from '../../subnet/lease.js';

export const WG_DEVICE = 'flannel-wg';
export const WG_DEVICE_V6 = 'flannel-wg-v6';

/**
 * Our lease's BackendData (flannel-wg) and, in a dual-stack network, BackendV6Data: our public key and
 * the port to reach us at over each family. In separate mode that is flannel-wg-v6's ListenPortV6; in a
 * single-device mode the one device's ListenPort (upstream writes ListenPortV6 there too, where no device
 * of ours would listen: docs/wireguard.md).
 */
export function ownLeaseData(config: WireguardBackendConfig, publicKey: string, ipv6: boolean): LeaseBackend {
  const portV6 = config.mode === 'separate' ? config.listenPortV6 : config.listenPort;
  return { type: 'wireguard', peer: { publicKey, port: config.listenPort }, peerV6: ipv6 ? { publicKey, port: portV6 } : null };
}

/** What the peers of every lease are made with. */
export interface PeerContext {
  config: WireguardBackendConfig;
  /** The network is dual stack. */
  ipv6: boolean;
  /** Our own underlay IPv6 address (auto mode compares it), or null. */
  ownPublicIPv6: string | null;
  /** The PSK's fingerprint, or null for none. */
  psk: string | null;
}

/** The peers a lease needs, and why a side of it is left out; or why the whole lease is. */
export type LeasePeers = { peers: WgPeerEntry[]; missing: string | null } | { error: string };

const RFC1918 = ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16'].map((n) => Ip4Net.parse(n));
const UNIQUE_LOCAL = Ip6Net.parse('fc00::/7');

/** Upstream's IsPrivate: RFC 1918 (IPv4), unique local fc00::/7 (IPv6). */
function isPrivate(ip: string): boolean {
  return ip.includes(':') ? UNIQUE_LOCAL.contains(parseIp6(ip)) : RFC1918.some((n) => n.contains(parseIp4(ip)));
}

/**
 * auto: the family a node is reached at, by upstream's rule (selectMode): IPv4 when the node has no
 * IPv6 address or a public IPv4 one; else IPv6 when its IPv6 address and ours are not unique local;
 * else IPv4. (Upstream also asks whether we have an IPv4 address: here we always do.)
 */
export function autoFamily(publicIP: string, publicIPv6: string | null, ownPublicIPv6: string | null): 4 | 6 {
  if (publicIPv6 === null || !isPrivate(publicIP)) return 4;
  if (!isPrivate(publicIPv6) && ownPublicIPv6 !== null && !isPrivate(ownPublicIPv6)) return 6;
  return 4;
}

export function leasePeers(lease: Lease, ctx: PeerContext): LeasePeers {
  const { backend, publicIP, publicIPv6 } = lease.attrs;
  if (backend.type !== 'wireguard') return { error: `backend type is ${backend.type}, not wireguard` };
  const { config } = ctx;
  const common = { keepalive: config.persistentKeepaliveInterval, psk: ctx.psk };
  const v6Subnet = ctx.ipv6 ? (lease.ipv6Subnet ?? null) : null;
  if (config.mode === 'separate') {
    const peers = [wgPeer(WG_DEVICE, backend.peer.publicKey, {
      ...common,
      allowedIPs: [lease.subnet],
      endpoint: { ip: parseIp4(publicIP), port: backend.peer.port ?? config.listenPort },
    })];
    let missing: string | null = null;
    if (v6Subnet) {
      if (!publicIPv6) missing = 'no PublicIPv6';
      else if (!backend.peerV6) missing = 'no BackendV6Data';
      else {
        peers.push(wgPeer(WG_DEVICE_V6, backend.peerV6.publicKey, {
          ...common,
          allowedIPs: [v6Subnet],
          endpoint: { ip: parseIp6(publicIPv6), port: backend.peerV6.port ?? config.listenPortV6 },
        }));
      }
    }
    return { peers, missing };
  }
  // One device for both families. The peer's port is its BackendData's: the one device it has listens
  // there (upstream reads BackendV6Data's for an IPv6 endpoint, which names ListenPortV6, where no
  // device of a single-device node listens: see docs/wireguard.md).
  const family = config.mode === 'ipv4' ? 4 : config.mode === 'ipv6' ? 6 : autoFamily(publicIP, publicIPv6, ctx.ownPublicIPv6);
  if (family === 6 && !publicIPv6) return { error: `Mode ${config.mode} reaches nodes at their IPv6 address, and the lease has no PublicIPv6` };
  const port = backend.peer.port ?? config.listenPort;
  const allowedIPs: IpNet[] = v6Subnet ? [lease.subnet, v6Subnet] : [lease.subnet];
  const endpoint = family === 4 ? { ip: parseIp4(publicIP), port } : { ip: parseIp6(publicIPv6!), port };
  return { peers: [wgPeer(WG_DEVICE, backend.peer.publicKey, { ...common, allowedIPs, endpoint })], missing: null };
}
