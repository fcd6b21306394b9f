// Remote wireguard leases as WireGuard peers, per Mode, as upstream v0.28.9's handleSubnetEvents makes
// them (separate: a peer per device and family; ipv4, ipv6, auto: one peer for both subnets on
// flannel-wg), the port a lease leaves out being our own device's; and the order a plan applies
// WireGuard entries in, beside the kernel's routes.
import { describe, expect, test } from 'vitest';
import { autoFamily, leasePeers } from '../src/backend/wireguard/peers.js';
import { Ip4Net } from '../src/common/ip4.js';
import { Ip6Net } from '../src/common/ip6.js';
import { describeEntry, unicastRoute, wgDevice, wgPeer } from '../src/routes/entries.js';
import { KernelModel } from '../src/routes/model.js';
import { parseWireguardBackend } from '../src/subnet/config.js';
import type { Lease, WireguardPeerData } from '../src/subnet/lease.js';

const KEY = 'HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=';
const PSK_ID = '0123456789abcdef';

function lease(opts: { publicIPv6?: string | null; peer?: WireguardPeerData; peerV6?: WireguardPeerData | null; v6?: boolean; publicIP?: string } = {}): Lease {
  return {
    subnet: Ip4Net.parse('198.19.7.0/24'),
    ...(opts.v6 === false ? {} : { ipv6Subnet: Ip6Net.parse('2001:2:1:7::/64') }),
    attrs: {
      publicIP: opts.publicIP ?? '198.18.0.7',
      publicIPv6: opts.publicIPv6 === undefined ? '2001:2::7' : opts.publicIPv6,
      backend: { type: 'wireguard', peer: opts.peer ?? { publicKey: KEY, port: 51820 }, peerV6: opts.peerV6 === undefined ? { publicKey: KEY, port: 51821 } : opts.peerV6 },
    },
    expiration: null,
  };
}

function peers(mode: string, l: Lease, ipv6 = true, extra: Record<string, unknown> = {}, ownPublicIPv6: string | null = '2001:2::1'): string[] {
  const config = parseWireguardBackend({ Mode: mode, ListenPort: 41000, ListenPortV6: 41001, ...extra }, ipv6);
  const got = leasePeers(l, { config, ipv6, ownPublicIPv6, psk: PSK_ID });
  if ('error' in got) return [`error: ${got.error}`];
  return [...got.peers.map(describeEntry), ...(got.missing ? [`missing: ${got.missing}`] : [])];
}

describe('leasePeers', () => {
  test('separate: a peer per device and family, each at its address and port, with the PSK and keepalive', () => {
    expect(peers('separate', lease(), true, { PersistentKeepaliveInterval: 25 })).toEqual([
      `peer ${KEY} dev flannel-wg allowed-ips 198.19.7.0/24 endpoint 198.18.0.7:51820 keepalive 25 psk`,
      `peer ${KEY} dev flannel-wg-v6 allowed-ips 2001:2:1:7::/64 endpoint [2001:2::7]:51821 keepalive 25 psk`,
    ]);
    // IPv4 only: flannel-wg alone.
    expect(peers('separate', lease({ v6: false, publicIPv6: null, peerV6: null }), false)).toEqual([`peer ${KEY} dev flannel-wg allowed-ips 198.19.7.0/24 endpoint 198.18.0.7:51820 psk`]);
  });

  test('separate: a lease without a port (upstream before v0.22) is reached at our own ports', () => {
    expect(peers('separate', lease({ peer: { publicKey: KEY, port: null }, peerV6: { publicKey: KEY, port: null } }))).toEqual([
      `peer ${KEY} dev flannel-wg allowed-ips 198.19.7.0/24 endpoint 198.18.0.7:41000 psk`,
      `peer ${KEY} dev flannel-wg-v6 allowed-ips 2001:2:1:7::/64 endpoint [2001:2::7]:41001 psk`,
    ]);
  });

  test('separate: a dual-stack lease without its IPv6 side keeps its IPv4 peer and says what is missing', () => {
    expect(peers('separate', lease({ publicIPv6: null }))).toEqual([`peer ${KEY} dev flannel-wg allowed-ips 198.19.7.0/24 endpoint 198.18.0.7:51820 psk`, 'missing: no PublicIPv6']);
    expect(peers('separate', lease({ peerV6: null }))).toEqual([`peer ${KEY} dev flannel-wg allowed-ips 198.19.7.0/24 endpoint 198.18.0.7:51820 psk`, 'missing: no BackendV6Data']);
  });

  test('ipv4, ipv6: one peer on flannel-wg for both subnets, at the address of that family and its one device\'s port', () => {
    expect(peers('ipv4', lease())).toEqual([`peer ${KEY} dev flannel-wg allowed-ips 198.19.7.0/24,2001:2:1:7::/64 endpoint 198.18.0.7:51820 psk`]);
    expect(peers('ipv6', lease())).toEqual([`peer ${KEY} dev flannel-wg allowed-ips 198.19.7.0/24,2001:2:1:7::/64 endpoint [2001:2::7]:51820 psk`]);
    expect(peers('ipv6', lease({ publicIPv6: null }))).toEqual(['error: Mode ipv6 reaches nodes at their IPv6 address, and the lease has no PublicIPv6']);
  });

  test('auto: IPv4 unless the node\'s IPv4 address is private and both IPv6 addresses are not', () => {
    expect(peers('auto', lease())).toEqual([`peer ${KEY} dev flannel-wg allowed-ips 198.19.7.0/24,2001:2:1:7::/64 endpoint 198.18.0.7:51820 psk`]);
    expect(autoFamily('198.18.0.7', '2001:2::7', '2001:2::1')).toBe(4); // a public IPv4 address
    expect(autoFamily('10.0.0.7', '2001:2::7', '2001:2::1')).toBe(6);
    expect(autoFamily('172.20.0.7', '2001:2::7', '2001:2::1')).toBe(6);
    expect(autoFamily('192.168.0.7', null, '2001:2::1')).toBe(4); // no IPv6 address
    expect(autoFamily('10.0.0.7', 'fd00::7', '2001:2::1')).toBe(4); // theirs unique local
    expect(autoFamily('10.0.0.7', '2001:2::7', 'fd00::1')).toBe(4); // ours unique local
    expect(autoFamily('10.0.0.7', '2001:2::7', null)).toBe(4); // we have none
  });

  test('a lease of another backend is no peer', () => {
    const l = lease();
    expect(leasePeers({ ...l, attrs: { ...l.attrs, backend: { type: 'host-gw' } } }, { config: parseWireguardBackend({}, true), ipv6: true, ownPublicIPv6: null, psk: null })).toEqual({
      error: 'backend type is host-gw, not wireguard',
    });
  });
});

describe('a plan with WireGuard entries', () => {
  test('device settings first, then peer removals, route removals, peer additions, and routes last: no route points into a tunnel without its peer', () => {
    const m = new KernelModel();
    const peer = (third: number) => wgPeer('flannel-wg', Buffer.alloc(32, third).toString('base64'), { allowedIPs: [Ip4Net.parse(`198.19.${third}.0/24`)], endpoint: { ip: 0xc6120000 + third, port: 51820 }, keepalive: 0, psk: null });
    m.set('devices', [wgDevice('flannel-wg', KEY, 51820)]);
    m.set('a', [peer(1)]);
    m.set('network', [unicastRoute(Ip4Net.parse('198.19.0.0/16'), 'flannel-wg'), unicastRoute(Ip4Net.parse('198.20.0.0/16'), 'flannel-wg')]);
    for (const op of m.plan()) m.applied(op);
    m.delete('a');
    m.set('b', [peer(2)]);
    m.set('devices', [wgDevice('flannel-wg', KEY, 51999)]);
    m.set('network', [unicastRoute(Ip4Net.parse('198.19.0.0/16'), 'flannel-wg')]);
    expect(m.plan().map((op) => `${op.action} ${op.entry.kind}`)).toEqual(['replace wgdev', 'delete wgpeer', 'delete route', 'replace wgpeer']);
    expect([m.programmedCount('wgpeer'), m.programmedCount('wgdev'), m.programmedCount('route')]).toEqual([1, 1, 2]);
  });
});
