// Remote vxlan leases as peers, and the kernel changes that make the kernel match a set of peers.
// Planning is a pure function of (wanted peers, kernel state) so that event handling, the first
// full sync and the periodic repair are the same code path.
import { fdbDeleteCommand, fdbReplaceCommand, type FdbEntry } from '../../routes/fdb.js';
import { neighDeleteCommand, neighReplaceCommand, type NeighEntry } from '../../routes/neigh.js';
import { routeDeleteCommand, routeReplaceCommand, type RouteEntry, type RouteSpec } from '../../routes/route.js';
import { Ip4Net, formatIp4 } from '../../subnet/ip4.js';
import type { Lease } from '../../subnet/lease.js';

export interface Peer {
  subnet: Ip4Net;
  publicIP: string;
  vtepMac: string;
  /** DirectRouting: the peer shares our L2 segment, so its subnet is routed via its PublicIP unencapsulated. */
  direct: { dev: string } | null;
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/** The VtepMAC of a vxlan lease, or the reason the lease cannot be used. */
export function leaseVtepMac(lease: Lease): { mac: string } | { error: string } {
  if (lease.attrs.backendType !== 'vxlan') return { error: `backend type is ${lease.attrs.backendType}, not vxlan` };
  const raw = lease.attrs.backendData?.['VtepMAC'];
  if (typeof raw !== 'string') return { error: 'BackendData has no VtepMAC' };
  const mac = raw.toLowerCase();
  if (!MAC.test(mac)) return { error: `VtepMAC "${raw}" is not a MAC address` };
  const first = parseInt(mac.slice(0, 2), 16);
  if (first & 1 || mac === '00:00:00:00:00:00') return { error: `VtepMAC ${mac} is not a unicast address` };
  return { mac };
}

export interface KernelState {
  routes: RouteEntry[];
  neighs: NeighEntry[];
  fdb: FdbEntry[];
}

export interface Plan {
  /** FDB deletions then additions, for one `bridge -batch`. */
  fdb: string[][];
  /** Route/neighbour deletions then additions, for one `ip -batch`. */
  ip: string[][];
}

export interface PlanContext {
  device: string;
  extIface: string;
  network: Ip4Net;
  subnetLen: number;
}

export function peerRoute(peer: Peer, device: string): RouteSpec {
  const dst = peer.subnet.toString();
  if (peer.direct) return { dst, via: peer.publicIP, dev: peer.direct.dev };
  return { dst, via: formatIp4(peer.subnet.ip), dev: device, onlink: true };
}

function inNetwork(dst: string, network: Ip4Net): Ip4Net | null {
  try {
    const net = Ip4Net.parse(dst);
    return network.covers(net) ? net : null;
  } catch {
    return null;
  }
}

export function planSync(peers: readonly Peer[], state: KernelState, ctx: PlanContext): Plan {
  const fdbDel: string[][] = [];
  const fdbAdd: string[][] = [];
  const routeDel: string[][] = [];
  const neighDel: string[][] = [];
  const neighAdd: string[][] = [];
  const routeAdd: string[][] = [];

  const wantRoutes = new Map(peers.map((p) => [p.subnet.toString(), peerRoute(p, ctx.device)]));
  const encapsulated = peers.filter((p) => !p.direct);
  const wantNeigh = new Map(encapsulated.map((p) => [formatIp4(p.subnet.ip), p.vtepMac]));
  const wantFdb = new Map(encapsulated.map((p) => [p.vtepMac, p.publicIP]));

  for (const [dst, want] of wantRoutes) {
    const ok = state.routes.some((r) => r.dst === dst && r.gateway === want.via && r.dev === want.dev);
    if (!ok) routeAdd.push(routeReplaceCommand(want));
  }
  for (const r of state.routes) {
    if (r.protocol === 'kernel' || wantRoutes.has(r.dst)) continue;
    const net = inNetwork(r.dst, ctx.network);
    if (!net) continue;
    const ours = r.dev === ctx.device || (r.dev === ctx.extIface && r.gateway !== null && net.prefixLen === ctx.subnetLen);
    if (ours) routeDel.push(routeDeleteCommand({ dst: r.dst, ...(r.gateway ? { via: r.gateway } : {}), dev: r.dev }));
  }

  for (const [ip, mac] of wantNeigh) {
    const ok = state.neighs.some((n) => n.ip === ip && n.mac === mac && n.permanent);
    if (!ok) neighAdd.push(neighReplaceCommand(ctx.device, ip, mac));
  }
  for (const n of state.neighs) {
    if (n.permanent && !wantNeigh.has(n.ip)) neighDel.push(neighDeleteCommand(ctx.device, n.ip));
  }

  for (const [mac, dst] of wantFdb) {
    const ok = state.fdb.some((e) => e.mac === mac && e.dst === dst && e.permanent);
    if (!ok) fdbAdd.push(fdbReplaceCommand(ctx.device, mac, dst));
  }
  for (const e of state.fdb) {
    const want = wantFdb.get(e.mac);
    if (want !== e.dst) fdbDel.push(fdbDeleteCommand(ctx.device, e.mac, e.dst));
  }

  // Routes go last on the way in (the kernel would otherwise ARP for the next hop) and first on the way out.
  return { fdb: [...fdbDel, ...fdbAdd], ip: [...routeDel, ...neighDel, ...neighAdd, ...routeAdd] };
}
