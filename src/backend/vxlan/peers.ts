// Remote vxlan leases as peers: which VTEP MAC a lease names, and the route a peer needs. The
// tables built from peers live in model.ts.
import type { RouteSpec } from '../../routes/route.js';
import { formatIp4, type Ip4Net } from '../../common/ip4.js';
import type { Lease } from '../../subnet/lease.js';

export interface Peer {
  subnet: Ip4Net;
  publicIP: string;
  vtepMac: string;
  /** DirectRouting: the peer shares our L2 segment, so its subnet is routed via its PublicIP unencapsulated. */
  direct: { dev: string } | null;
}

/** The VtepMAC of a vxlan lease (decoded and checked with the lease), or why the lease is not one. */
export function leaseVtepMac(lease: Lease): { mac: string } | { error: string } {
  const { backend } = lease.attrs;
  if (backend.type !== 'vxlan') return { error: `backend type is ${backend.type}, not vxlan` };
  return { mac: backend.vtep.mac };
}

export function peerRoute(peer: Peer, device: string): RouteSpec {
  const dst = peer.subnet.toString();
  if (peer.direct) return { dst, via: peer.publicIP, dev: peer.direct.dev };
  return { dst, via: formatIp4(peer.subnet.ip), dev: device, onlink: true };
}
