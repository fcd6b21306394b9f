// Remote vxlan leases as kernel entries, per family, as upstream flannel programs them: a route to the
// peer's subnet via the subnet's network address (onlink) on our device, a permanent neighbour entry
// resolving that address to the peer's VTEP MAC, and a permanent FDB entry sending that MAC to the
// peer's public address. A DirectRouting peer (on a link of ours) gets a route via its public address
// instead, and nothing else: its packets go unencapsulated.
import { parseIp4 } from '../../common/ip4.js';
import { parseIp6 } from '../../common/ip6.js';
import { type Family, type IpAddr, type IpNet, type KernelEntry, permanentFdb, permanentNeighbour, unicastRoute } from '../../routes/entries.js';
import type { Lease } from '../../subnet/lease.js';

/** What a lease says about one family of its node's vxlan side. */
export interface VxlanSide {
  family: Family;
  subnet: IpNet;
  publicIP: IpAddr;
  mac: string;
}

/**
 * The sides of a vxlan lease: IPv4 always; IPv6 when `ipv6` and the lease has an IPv6 subnet, a
 * PublicIPv6 and BackendV6Data. `missingV6` says why a lease with an IPv6 subnet has no IPv6 side.
 */
export function vxlanSides(lease: Lease, ipv6: boolean): { sides: VxlanSide[]; missingV6: string | null } | { error: string } {
  const { backend } = lease.attrs;
  if (backend.type !== 'vxlan') return { error: `backend type is ${backend.type}, not vxlan` };
  const sides: VxlanSide[] = [{ family: 4, subnet: lease.subnet, publicIP: parseIp4(lease.attrs.publicIP), mac: backend.vtep.mac }];
  let missingV6: string | null = null;
  const v6Subnet = lease.ipv6Subnet ?? null;
  if (ipv6 && v6Subnet) {
    if (!lease.attrs.publicIPv6) missingV6 = 'no PublicIPv6';
    else if (!backend.vtepV6) missingV6 = 'no BackendV6Data.VtepMAC';
    else sides.push({ family: 6, subnet: v6Subnet, publicIP: parseIp6(lease.attrs.publicIPv6), mac: backend.vtepV6.mac });
  }
  return { sides, missingV6 };
}

/** The entries one side needs on `device`; `directDev` (DirectRouting) routes it unencapsulated instead. */
export function sideEntries(side: VxlanSide, device: string, directDev: string | null): KernelEntry[] {
  if (directDev !== null) return [unicastRoute(side.subnet, directDev, side.publicIP)];
  return [
    permanentFdb(device, side.mac, side.publicIP),
    permanentNeighbour(device, side.subnet.ip, side.mac),
    unicastRoute(side.subnet, device, side.subnet.ip, { onlink: true }),
  ];
}
