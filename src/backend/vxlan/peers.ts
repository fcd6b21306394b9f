// Remote vxlan leases as peers: which VTEP MAC a lease names, and the route a peer needs. The
// tables built from peers live in model.ts.
import type { RouteSpec } from '../../routes/route.js';
import { isCanonicalIp4 } from '../../routes/words.js';
import { formatIp4, type Ip4Net } from '../../common/ip4.js';
import type { Lease } from '../../subnet/lease.js';

export interface Peer {
  subnet: Ip4Net;
  publicIP: string;
  vtepMac: string;
  /** DirectRouting: the peer shares our L2 segment, so its subnet is routed via its PublicIP unencapsulated. */
  direct: { dev: string } | null;
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/**
 * The VtepMAC of a vxlan lease, or the reason the lease cannot be used. Every value that will be a
 * word of a kernel batch is checked here, exactly as written (no trimming): PublicIP and VtepMAC.
 */
export function leaseVtepMac(lease: Lease): { mac: string } | { error: string } {
  if (lease.attrs.backendType !== 'vxlan') return { error: `backend type is ${lease.attrs.backendType}, not vxlan` };
  if (!isCanonicalIp4(lease.attrs.publicIP)) return { error: `PublicIP ${JSON.stringify(lease.attrs.publicIP)} is not a canonical IPv4 address` };
  const raw = lease.attrs.backendData?.['VtepMAC'];
  if (typeof raw !== 'string') return { error: 'BackendData has no VtepMAC' };
  const mac = raw.toLowerCase();
  if (!MAC.test(mac)) return { error: `VtepMAC "${raw}" is not a MAC address` };
  const first = parseInt(mac.slice(0, 2), 16);
  if (first & 1 || mac === '00:00:00:00:00:00') return { error: `VtepMAC ${mac} is not a unicast address` };
  return { mac };
}

export function peerRoute(peer: Peer, device: string): RouteSpec {
  const dst = peer.subnet.toString();
  if (peer.direct) return { dst, via: peer.publicIP, dev: peer.direct.dev };
  return { dst, via: formatIp4(peer.subnet.ip), dev: device, onlink: true };
}
