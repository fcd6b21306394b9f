// The vxlan backend's picture of the kernel: the peers we want, and the route, neighbour and FDB
// entries we believe are programmed. Lease events change the wanted side and mark the table keys
// they touch; a plan then compares only those keys, so an event costs the same at 10 peers as at
// 5,000. A full reconcile replaces the programmed side with a kernel snapshot and compares every
// key once — Map lookups, linear in the table sizes. No I/O here: the backend runs the plans.
import { fdbDeleteCommand, fdbReplaceCommand, type FdbEntry } from '../../routes/fdb.js';
import { neighDeleteCommand, neighReplaceCommand, type NeighEntry } from '../../routes/neigh.js';
import { routeDeleteCommand, routeReplaceCommand, type RouteEntry, type RouteSpec } from '../../routes/route.js';
import { Ip4Net, formatIp4 } from '../../common/ip4.js';
import { peerRoute, type Peer } from './peers.js';

export type EntryKind = 'route' | 'neigh' | 'fdb';

/** One kernel change: one line of a `bridge -batch` (fdb) or `ip -batch` (route, neigh). */
export interface KernelOp {
  kind: EntryKind;
  action: 'replace' | 'delete';
  /** The table key: route destination, neighbour address or FDB MAC. */
  key: string;
  /** The peer subnet the entry serves (for logs); null for an entry nobody wants any more. */
  subnet: string | null;
  /** Route: "via|dev"; neigh: MAC; fdb: destination IP — what the entry holds after a replace, or held before a delete. */
  value: string;
  /** The batch line; null when a value failed its word check (the op is refused, never sent). */
  words: string[] | null;
  /** Why `words` is null. */
  invalid?: string;
}

export interface KernelSnapshot {
  routes: readonly RouteEntry[];
  neighs: readonly NeighEntry[];
  fdb: readonly FdbEntry[];
}

export interface ModelContext {
  device: string;
  extIface: string;
  network: Ip4Net;
  subnetLen: number;
}

/** Entries several peers may claim (two leases with one VtepMAC): the lowest subnet key wins, on every node alike. */
class Claims {
  private readonly byKey = new Map<string, Map<string, string>>();

  set(key: string, owner: string, value: string): void {
    let owners = this.byKey.get(key);
    if (!owners) this.byKey.set(key, (owners = new Map()));
    owners.set(owner, value);
  }

  release(key: string, owner: string): void {
    const owners = this.byKey.get(key);
    if (!owners) return;
    owners.delete(owner);
    if (owners.size === 0) this.byKey.delete(key);
  }

  /** The wanted value and the subnet that wants it. */
  get(key: string): { owner: string; value: string } | undefined {
    const owners = this.byKey.get(key);
    if (!owners) return undefined;
    let best: string | undefined;
    for (const owner of owners.keys()) if (best === undefined || owner < best) best = owner;
    return { owner: best!, value: owners.get(best!)! };
  }

  keys(): IterableIterator<string> {
    return this.byKey.keys();
  }

  has(key: string): boolean {
    return this.byKey.has(key);
  }
}

function routeValue(r: { via?: string | null; dev: string }): string {
  return `${r.via ?? ''}|${r.dev}`;
}

/** A wanted peer with the strings its entries need, computed once when it is set. */
interface WantedPeer {
  peer: Peer;
  route: RouteSpec;
  routeValue: string;
  /** The neighbour (next hop) address; null for a DirectRouting peer. */
  neighIp: string | null;
}

function sameRoute(a: Peer, b: Peer): boolean {
  return a.publicIP === b.publicIP && a.vtepMac === b.vtepMac && (a.direct?.dev ?? null) === (b.direct?.dev ?? null);
}

export class PeerModel {
  /** Remote peers by subnet ("a.b.c.d/len"). */
  private readonly peers = new Map<string, WantedPeer>();
  /** What we believe the kernel holds: route dst → "via|dev", neighbour IP → MAC, FDB MAC → dst. */
  readonly programmed = { routes: new Map<string, string>(), neighs: new Map<string, string>(), fdb: new Map<string, string>() };
  private readonly neighClaims = new Claims();
  private readonly fdbClaims = new Claims();
  private readonly dirty = { routes: new Set<string>(), neighs: new Set<string>(), fdb: new Set<string>() };

  constructor(private readonly ctx: ModelContext) {}

  private direct = 0;
  /** Bumped by every change to the wanted peers. */
  version = 0;

  get size(): number {
    return this.peers.size;
  }

  get directCount(): number {
    return this.direct;
  }

  has(subnet: string): boolean {
    return this.peers.has(subnet);
  }

  /** Number of table keys waiting for a plan. */
  get pending(): number {
    return this.dirty.routes.size + this.dirty.neighs.size + this.dirty.fdb.size;
  }

  /** Adds or updates a peer; returns 'added', 'updated' or null when nothing changed. */
  setPeer(peer: Peer): 'added' | 'updated' | null {
    const key = peer.subnet.toString();
    const old = this.peers.get(key);
    if (old && sameRoute(old.peer, peer)) return null;
    if (old) this.release(key, old);
    this.version++;
    const route = peerRoute(peer, this.ctx.device);
    const entry: WantedPeer = { peer, route, routeValue: routeValue(route), neighIp: peer.direct ? null : formatIp4(peer.subnet.ip) };
    this.peers.set(key, entry);
    this.dirty.routes.add(key);
    if (entry.neighIp !== null) {
      this.neighClaims.set(entry.neighIp, key, peer.vtepMac);
      this.fdbClaims.set(peer.vtepMac, key, peer.publicIP);
      this.dirty.neighs.add(entry.neighIp);
      this.dirty.fdb.add(peer.vtepMac);
    } else this.direct++;
    return old ? 'updated' : 'added';
  }

  /** Drops a peer; returns whether it was known. */
  removePeer(subnet: string): boolean {
    const old = this.peers.get(subnet);
    if (!old) return false;
    this.peers.delete(subnet);
    this.version++;
    this.release(subnet, old);
    this.dirty.routes.add(subnet);
    return true;
  }

  private release(key: string, old: WantedPeer): void {
    if (old.neighIp === null) {
      this.direct--;
      return;
    }
    this.neighClaims.release(old.neighIp, key);
    this.fdbClaims.release(old.peer.vtepMac, key);
    this.dirty.neighs.add(old.neighIp);
    this.dirty.fdb.add(old.peer.vtepMac);
  }

  /**
   * The kernel changes for every marked key, in a safe order: FDB first (deletions, then
   * replacements), then route deletions, neighbour deletions, neighbour replacements and route
   * replacements last — a route never points at a next hop that cannot be resolved and delivered.
   * Clears the marks; the caller reports each op's outcome with `applied`.
   */
  plan(): KernelOp[] {
    const fdbDel: KernelOp[] = [];
    const fdbAdd: KernelOp[] = [];
    const routeDel: KernelOp[] = [];
    const neighDel: KernelOp[] = [];
    const neighAdd: KernelOp[] = [];
    const routeAdd: KernelOp[] = [];
    const { device } = this.ctx;

    for (const mac of this.dirty.fdb) {
      const want = this.fdbClaims.get(mac);
      const have = this.programmed.fdb.get(mac);
      if (want?.value === have) continue;
      if (want) fdbAdd.push(op('fdb', 'replace', mac, want.owner, want.value, () => fdbReplaceCommand(device, mac, want.value)));
      else if (have !== undefined) fdbDel.push(op('fdb', 'delete', mac, null, have, () => fdbDeleteCommand(device, mac, have)));
    }
    for (const ip of this.dirty.neighs) {
      const want = this.neighClaims.get(ip);
      const have = this.programmed.neighs.get(ip);
      if (want?.value === have) continue;
      if (want) neighAdd.push(op('neigh', 'replace', ip, want.owner, want.value, () => neighReplaceCommand(device, ip, want.value)));
      else if (have !== undefined) neighDel.push(op('neigh', 'delete', ip, null, have, () => neighDeleteCommand(device, ip)));
    }
    for (const dst of this.dirty.routes) {
      const want = this.peers.get(dst);
      const have = this.programmed.routes.get(dst);
      if (want && want.routeValue === have) continue;
      if (want) routeAdd.push(op('route', 'replace', dst, dst, want.routeValue, () => routeReplaceCommand(want.route)));
      else if (have !== undefined) {
        const [via, dev] = have.split('|') as [string, string];
        routeDel.push(op('route', 'delete', dst, null, have, () => routeDeleteCommand({ dst, ...(via ? { via } : {}), dev })));
      }
    }
    this.dirty.fdb.clear();
    this.dirty.neighs.clear();
    this.dirty.routes.clear();
    return [...fdbDel, ...fdbAdd, ...routeDel, ...neighDel, ...neighAdd, ...routeAdd];
  }

  /** Records an op the kernel accepted. A refused op changes nothing: the next reconcile retries it. */
  applied(o: KernelOp): void {
    const table = o.kind === 'route' ? this.programmed.routes : o.kind === 'neigh' ? this.programmed.neighs : this.programmed.fdb;
    if (o.action === 'replace') table.set(o.key, o.value);
    else if (table.get(o.key) === o.value) table.delete(o.key);
  }

  /**
   * Takes a kernel snapshot as the programmed side and marks every key, so that the next plan
   * repairs whatever differs. Entries of ours that must go but that the tables cannot represent
   * (a second FDB destination for one MAC) are returned as deletions to run first.
   */
  resetFromKernel(snapshot: KernelSnapshot): KernelOp[] {
    const { device, extIface, network, subnetLen } = this.ctx;
    const { routes, neighs, fdb } = this.programmed;
    routes.clear();
    neighs.clear();
    fdb.clear();
    for (const r of snapshot.routes) {
      if (r.protocol === 'kernel' || routes.has(r.dst)) continue;
      if (this.peers.has(r.dst)) {
        routes.set(r.dst, routeValue({ via: r.gateway, dev: r.dev }));
        continue;
      }
      // Not wanted: remove it only if it is inside the Network and looks like ours.
      const ours = r.dev === device || (r.dev === extIface && r.gateway !== null && r.dst.endsWith(`/${subnetLen}`));
      if (ours && inside(r.dst, network)) routes.set(r.dst, routeValue({ via: r.gateway, dev: r.dev }));
    }
    for (const n of snapshot.neighs) if (n.permanent && n.mac) neighs.set(n.ip, n.mac);
    const extra: KernelOp[] = [];
    for (const e of snapshot.fdb) {
      const want = this.fdbClaims.get(e.mac);
      if (want?.value === e.dst && e.permanent && !fdb.has(e.mac)) {
        fdb.set(e.mac, e.dst);
        continue;
      }
      // The one destination an unwanted MAC keeps here is deleted by the plan; any further one now.
      if (!want && !fdb.has(e.mac)) {
        fdb.set(e.mac, e.dst);
        continue;
      }
      extra.push(op('fdb', 'delete', e.mac, null, e.dst, () => fdbDeleteCommand(device, e.mac, e.dst)));
    }
    // Mark only the keys where the kernel differs from what is wanted: one Map lookup per key.
    for (const [k, want] of this.peers) if (routes.get(k) !== want.routeValue) this.dirty.routes.add(k);
    for (const k of routes.keys()) if (!this.peers.has(k)) this.dirty.routes.add(k);
    markDiffering(this.neighClaims, neighs, this.dirty.neighs);
    markDiffering(this.fdbClaims, fdb, this.dirty.fdb);
    return extra;
  }
}

function markDiffering(claims: Claims, have: Map<string, string>, dirty: Set<string>): void {
  for (const k of claims.keys()) if (claims.get(k)!.value !== have.get(k)) dirty.add(k);
  for (const k of have.keys()) if (!claims.has(k)) dirty.add(k);
}

function inside(cidr: string, network: Ip4Net): boolean {
  try {
    return network.covers(Ip4Net.parse(cidr));
  } catch {
    return false;
  }
}

function op(kind: EntryKind, action: KernelOp['action'], key: string, subnet: string | null, value: string, words: () => string[]): KernelOp {
  try {
    return { kind, action, key, subnet, value, words: words() };
  } catch (err) {
    return { kind, action, key, subnet, value, words: null, invalid: (err as Error).message };
  }
}
