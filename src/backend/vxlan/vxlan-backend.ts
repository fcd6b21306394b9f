// The vxlan backend, as upstream flannel v0.20.2 programs it: one kernel VXLAN device flannel.<VNI>
// and, per remote node, a route to its subnet via the subnet's network address (onlink), a permanent
// neighbour entry mapping that address to the node's VTEP MAC, and a permanent FDB entry sending
// that MAC to the node's PublicIP. The kernel moves every packet; this class only keeps the tables
// right. It holds the wanted peers and makes the kernel match them — on every event batch, and
// every few seconds to repair entries removed by hand or left over from an earlier run.
import type { Backend, BackendAnnouncement, BackendContext } from '../backend.js';
import type { VxlanBackendConfig } from '../../subnet/config.js';
import type { Lease, LeaseEvent } from '../../subnet/lease.js';
import { Ip4Net, formatIp4, parseIp4 } from '../../subnet/ip4.js';
import { addrDeleteCommand, addrReplaceCommand, listIp4Addrs } from '../../routes/addr.js';
import { listFdb } from '../../routes/fdb.js';
import { bridgeBatch, ipBatch, type IpOptions } from '../../routes/ip.js';
import { linkSetCommand, readLink, type VxlanSpec } from '../../routes/link.js';
import { listNeighbours } from '../../routes/neigh.js';
import { listRoutes, routeGet } from '../../routes/route.js';
import { ensureVxlanDevice } from './device.js';
import { leaseVtepMac, planSync, type Peer, type Plan } from './peers.js';
import { VxlanV6Side } from './v6-side.js';

/** Per-IP encapsulation cost: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14). */
export const VXLAN_OVERHEAD = 50;

export interface VxlanBackendOptions {
  /** Program this named network namespace instead of our own (tests drive several "nodes" from one process). */
  netns?: string;
  /** How often the kernel tables are checked and repaired; default 5000 ms, 0 disables. */
  resyncIntervalMs?: number;
}

export class VxlanBackend implements Backend {
  private readonly device: string;
  private readonly ipOpts: IpOptions;
  private readonly peers = new Map<string, Peer>();
  private extSubnets: Ip4Net[] = [];
  private mac: string | null = null;
  private ownLease: Lease | null = null;
  private timer: NodeJS.Timeout | null = null;
  private queue: Promise<void> = Promise.resolve();
  private readonly counters = { eventBatches: 0, resyncs: 0, repairs: 0, errors: 0, skippedLeases: 0, deviceRecreated: 0 };
  /** Dual stack (EnableIPv6): the flannel-v6.<VNI> device and its tables (v6-side.ts). */
  private readonly v6: VxlanV6Side | null;

  constructor(
    readonly ctx: BackendContext,
    readonly config: VxlanBackendConfig,
    private readonly options: VxlanBackendOptions = {},
  ) {
    this.device = `flannel.${config.vni}`;
    this.ipOpts = options.netns ? { netns: options.netns } : {};
    this.v6 = ctx.network.ipv6 ? new VxlanV6Side(ctx, config, this.ipOpts) : null;
  }

  private get mtu(): number {
    return this.config.mtu ?? this.ctx.extIface.mtu - VXLAN_OVERHEAD;
  }

  private spec(): VxlanSpec {
    const { extIface } = this.ctx;
    return {
      name: this.device,
      vni: this.config.vni,
      local: extIface.ifaceIP,
      dev: extIface.name,
      port: this.config.port,
      learning: false,
      gbp: this.config.gbp,
      mtu: this.mtu,
      // Recreating a device that vanished under us with the MAC we published keeps peers' FDBs valid.
      ...(this.mac ? { address: this.mac } : {}),
    };
  }

  async prepare(): Promise<BackendAnnouncement> {
    const link = await ensureVxlanDevice(this.spec(), this.ctx.log, this.ipOpts);
    this.mac = link.address;
    this.extSubnets = (await listIp4Addrs(this.ctx.extIface.name, this.ipOpts)).map((a) => Ip4Net.parse(a.cidr, true));
    const backendV6Data = this.v6 ? await this.v6.prepare() : null;
    return { backendData: { VNI: this.config.vni, VtepMAC: this.mac }, mtu: link.mtu, ...(backendV6Data ? { backendV6Data } : {}) };
  }

  async setOwnLease(lease: Lease): Promise<void> {
    this.ownLease = lease;
    await this.serialized(async () => {
      // After a move our new subnet may still be known as a peer's (the manager drops it from its
      // known set without a 'removed' event): it must not be routed into the overlay.
      this.peers.delete(lease.subnet.toString());
      await this.addressDevice(lease);
      await this.v6?.setOwnLease(lease);
    }, { rethrow: true });
  }

  // The subnet's network address as /32: a source address for host-to-pod traffic that creates no
  // broadcast or prefix routes. Any other address (an old lease) is removed.
  private async addressDevice(lease: Lease): Promise<void> {
    const want = `${formatIp4(lease.subnet.ip)}/32`;
    const have = await listIp4Addrs(this.device, this.ipOpts);
    await ipBatch([
      ...have.filter((a) => a.cidr !== want).map((a) => addrDeleteCommand(this.device, a.cidr)),
      addrReplaceCommand(this.device, want),
      linkSetCommand(this.device, { up: true }),
    ], this.ipOpts);
  }

  // Someone deleted our device, set it down or changed its address: recreate it (with the MAC we
  // published) and re-address it. Returns the number of repairs made.
  private async repairDevice(): Promise<number> {
    if (!this.mac) return 0; // not prepared
    const link = await readLink(this.device, this.ipOpts);
    if (!link) {
      this.ctx.log.warn({ device: this.device }, 'vxlan device disappeared; recreating it');
      this.counters.deviceRecreated++;
      await ensureVxlanDevice(this.spec(), this.ctx.log, this.ipOpts);
    }
    if (!this.ownLease) return link ? 0 : 1;
    const want = `${formatIp4(this.ownLease.subnet.ip)}/32`;
    const addrs = await listIp4Addrs(this.device, this.ipOpts);
    if (link?.up && addrs.length === 1 && addrs[0]!.cidr === want) return 0;
    this.ctx.log.warn({ device: this.device }, 'vxlan device is down or wrongly addressed; restoring it');
    await this.addressDevice(this.ownLease);
    return 1;
  }

  async handleLeaseEvents(events: readonly LeaseEvent[]): Promise<void> {
    await this.serialized(async () => {
      this.counters.eventBatches++;
      for (const event of events) await this.applyEvent(event);
      // The wanted set is complete from the first batch on: from then, resyncs may remove state
      // (and they retry this batch's changes should applying them fail).
      this.startResync();
      await this.sync('event');
    });
    await this.v6?.handleLeaseEvents(events);
  }

  private async applyEvent(event: LeaseEvent): Promise<void> {
    const key = event.lease.subnet.toString();
    if (event.type === 'removed') {
      if (this.peers.delete(key)) this.ctx.log.info({ subnet: key }, 'removing subnet');
      return;
    }
    const { lease } = event;
    const vtep = leaseVtepMac(lease);
    if ('error' in vtep) {
      this.counters.skippedLeases++;
      this.peers.delete(key);
      this.ctx.log.warn({ subnet: key, publicIP: lease.attrs.publicIP, reason: vtep.error }, 'ignoring lease');
      return;
    }
    if (this.ownLease && this.ownLease.subnet.toString() === key) return;
    const peer: Peer = { subnet: lease.subnet, publicIP: lease.attrs.publicIP, vtepMac: vtep.mac, direct: await this.directRoute(lease.attrs.publicIP) };
    const old = this.peers.get(key);
    if (!old || old.vtepMac !== peer.vtepMac || old.publicIP !== peer.publicIP || old.direct?.dev !== peer.direct?.dev) {
      this.ctx.log.info({ subnet: key, publicIP: peer.publicIP, vtepMAC: peer.vtepMac, direct: peer.direct !== null }, old ? 'updating subnet' : 'adding subnet');
    }
    this.peers.set(key, peer);
  }

  // DirectRouting: a peer on our own L2 segment is reached by plain routing via its PublicIP.
  private async directRoute(publicIP: string): Promise<{ dev: string } | null> {
    if (!this.config.directRouting) return null;
    const ip = parseIp4(publicIP);
    if (this.extSubnets.some((net) => net.contains(ip))) return { dev: this.ctx.extIface.name };
    const lookup = await routeGet(publicIP, this.ipOpts);
    return lookup && lookup.gateway === null ? { dev: lookup.dev } : null;
  }

  /** Makes the kernel tables match the wanted peers. Returns how many changes were applied. */
  private async sync(reason: 'event' | 'resync'): Promise<number> {
    const deviceRepairs = await this.repairDevice();
    const plan = await this.plan();
    const changes = plan.fdb.length + plan.ip.length + deviceRepairs;
    if (plan.fdb.length + plan.ip.length === 0) return changes;
    this.ctx.log.debug({ reason, fdb: plan.fdb, ip: plan.ip }, 'applying vxlan table changes');
    // FDB first: a route must never point at a neighbour whose MAC has nowhere to go. -force
    // applies every line it can; the next resync retries what failed.
    const failures: unknown[] = [];
    await bridgeBatch(plan.fdb, { ...this.ipOpts, force: true }).catch((err: unknown) => failures.push(err));
    await ipBatch(plan.ip, { ...this.ipOpts, force: true }).catch((err: unknown) => failures.push(err));
    if (failures.length > 0) throw new AggregateError(failures, failures.map(String).join('; '));
    return changes;
  }

  private async plan(): Promise<Plan> {
    const [routes, neighs, fdb] = await Promise.all([
      listRoutes({}, this.ipOpts),
      listNeighbours(this.device, this.ipOpts),
      listFdb(this.device, this.ipOpts),
    ]);
    return planSync([...this.peers.values()], { routes, neighs, fdb }, {
      device: this.device,
      extIface: this.ctx.extIface.name,
      network: this.ctx.network.network,
      subnetLen: this.ctx.network.subnetLen,
    });
  }

  private startResync(): void {
    const interval = this.options.resyncIntervalMs ?? 5000;
    if (interval <= 0 || this.timer) return;
    this.timer = setInterval(() => {
      void this.serialized(async () => {
        this.counters.resyncs++;
        await this.v6?.sync('resync');
        const repaired = await this.sync('resync');
        if (repaired > 0) {
          this.counters.repairs += repaired;
          this.ctx.log.info({ changes: repaired }, 'resync repaired vxlan kernel state');
        }
      });
    }, interval);
    this.timer.unref();
  }

  // One kernel update at a time. A failed lease update is logged and counted, never thrown into
  // the event loop: the periodic resync retries it. Only setOwnLease reports failure to its caller.
  private serialized(work: () => Promise<void>, opts: { rethrow?: boolean } = {}): Promise<void> {
    const result = this.queue.then(work);
    this.queue = result.catch(() => {});
    return result.catch((err: unknown) => {
      this.counters.errors++;
      this.ctx.log.error({ err }, 'vxlan backend: kernel update failed');
      if (opts.rethrow) throw err;
    });
  }

  stats(): Record<string, number> {
    const peers = [...this.peers.values()];
    return { peers: peers.length, directPeers: peers.filter((p) => p.direct).length, ...this.counters, ...(this.v6?.stats() ?? {}) };
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.queue;
    await this.v6?.close();
  }
}
