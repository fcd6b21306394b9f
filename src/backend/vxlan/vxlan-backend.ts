// The vxlan backend, as upstream flannel programs it: one kernel VXLAN device per family
// (flannel.<VNI>, and flannel-v6.<VNI> in dual stack — two instances of device.ts) and, per remote
// node and family, a route, a permanent neighbour and a permanent FDB entry (peers.ts). The kernel
// moves every packet; this class only turns leases into the entries each peer needs and hands them
// to the kernel reconciler (src/routes/reconciler.ts), which sends what changed, repairs what others
// changed on its periodic pass, and applies each entry on its own.
import type { Backend, BackendAnnouncement, BackendContext } from '../backend.js';
import { kernelMetrics } from '../../common/metrics.js';
import type { VxlanBackendConfig } from '../../subnet/config.js';
import type { Lease, LeaseEvent } from '../../subnet/lease.js';
import { type KernelEntry, RTPROT_KERNEL, netFamily } from '../../routes/entries.js';
import { openKernelPath } from '../../routes/path.js';
import { KernelReconciler, type KernelScope } from '../../routes/reconciler.js';
import { LatestEvent } from '../latest-event.js';
import { OnLinkCheck } from '../on-link.js';
import { PeerChangeLog } from '../peer-change-log.js';
import { VxlanDevice } from './device.js';
import { sideEntries, vxlanSides } from './peers.js';

export interface VxlanBackendOptions {
  /** Program this named network namespace instead of our own (tests drive several "nodes" from one process). */
  netns?: string;
  /** How often the kernel tables are checked and repaired; default 5000 ms, 0 disables. */
  resyncIntervalMs?: number;
  /** How entries reach the kernel: rtnetlink from the addon (default when it is built) or `ip`/`bridge -batch`. */
  kernelPath?: 'netlink' | 'iproute2';
}

export class VxlanBackend implements Backend {
  private readonly v4: VxlanDevice;
  /** Dual stack (EnableIPv6): flannel-v6.<VNI>. */
  private readonly v6: VxlanDevice | null;
  private readonly kernel: KernelReconciler;
  private readonly stop = new AbortController();
  private readonly ipOpts: { netns?: string };
  private readonly onLink: OnLinkCheck;
  private ownLease: Lease | null = null;
  /** An event whose DirectRouting lookup finished after a newer one for the same peer began is dropped. */
  private readonly latest = new LatestEvent();
  /** Peers routed directly (DirectRouting), by subnet. */
  private readonly direct = new Set<string>();
  private readonly counters = { eventBatches: 0, skippedLeases: 0, v6SkippedLeases: 0 };

  constructor(
    readonly ctx: BackendContext,
    readonly config: VxlanBackendConfig,
    options: VxlanBackendOptions = {},
  ) {
    this.ipOpts = options.netns ? { netns: options.netns } : {};
    this.v4 = new VxlanDevice(4, config, ctx.extIface, ctx.log, this.ipOpts);
    this.v6 = ctx.network.ipv6 ? new VxlanDevice(6, config, ctx.extIface, ctx.log, this.ipOpts) : null;
    this.onLink = new OnLinkCheck(ctx.extIface.name, this.ipOpts);
    this.kernel = new KernelReconciler({
      name: 'vxlan',
      log: ctx.log,
      path: openKernelPath(options.kernelPath ?? 'netlink', options.netns, ctx.log),
      scope: () => this.scope(),
      signal: this.stop.signal,
      resyncIntervalMs: options.resyncIntervalMs ?? 5000,
      // The devices first: the entries on them are only as good as the devices.
      beforePass: async (reasons) => (reasons.has('resync') ? (await this.v4.repair()) + ((await this.v6?.repair()) ?? 0) : 0),
      afterApply: () => kernelMetrics.peers.set({ backend: 'vxlan' }, this.kernel.programmed('route', 4)),
    });
  }

  private get devices(): VxlanDevice[] {
    return this.v6 ? [this.v4, this.v6] : [this.v4];
  }

  /**
   * What a full pass reads, and what of it is ours: routes inside the Network(s) through our devices,
   * gatewayed subnet-sized routes on the underlay there (DirectRouting's, perhaps of a vanished peer),
   * and the permanent neighbours and FDB entries of our devices. Others' entries are left alone.
   */
  private scope(): KernelScope {
    const { network, subnetLen, ipv6 } = this.ctx.network;
    const names = this.devices.map((d) => d.name);
    const ext = this.ctx.extIface.name;
    return {
      routeRoots: ipv6 ? [network, ipv6.network] : [network],
      devices: names,
      owns: (e: KernelEntry) => {
        if (e.kind === 'neigh') return e.permanent && names.includes(e.dev);
        if (e.kind === 'fdb') return names.includes(e.dev);
        if (e.protocol === RTPROT_KERNEL || e.type !== 'unicast' || e.dev === null) return false;
        if (names.includes(e.dev)) return true;
        const len = netFamily(e.dst) === 4 ? subnetLen : ipv6?.subnetLen;
        return e.dev === ext && e.via !== null && e.dst.prefixLen === len;
      },
    };
  }

  async prepare(): Promise<BackendAnnouncement> {
    const link = await this.v4.ensure();
    const v6 = this.v6 ? await this.v6.ensure() : null;
    if (this.config.directRouting) await this.onLink.refresh();
    return {
      backend: { type: 'vxlan', vtep: { vni: this.config.vni, mac: link.address }, vtepV6: v6 ? { vni: this.config.vni, mac: v6.address } : null },
      mtu: link.mtu,
    };
  }

  async setOwnLease(lease: Lease): Promise<void> {
    this.ownLease = lease;
    // After a move our new subnet may still be known as a peer's (the manager drops it from its
    // known set without a 'removed' event): it must not be routed into the overlay.
    this.kernel.delete(lease.subnet.toString());
    await this.kernel
      .exclusive(async () => {
        await this.v4.setSubnet(lease.subnet);
        await this.v6?.setSubnet(lease.ipv6Subnet ?? null);
      })
      .catch((err: unknown) => {
        this.kernel.countError('address');
        this.ctx.log.error({ err }, 'vxlan backend: cannot address the device');
        throw err;
      });
    // A move re-addresses the devices: check every entry against the kernel now, not in 5 s.
    if (this.kernel.complete) await this.kernel.resync();
  }

  /**
   * Puts the events into the reconciler's model and asks for a pass. The first call (every lease
   * there is) resolves once the full pass is done, so the daemon is ready with every peer programmed;
   * later calls resolve once their events are in the model — what arrives while a pass runs goes into
   * the next one, which turns a burst of watch responses into a few kernel batches. `settled()` waits
   * for the kernel. Never rejects: refused entries are logged, counted and retried by the next resync.
   */
  async handleLeaseEvents(events: readonly LeaseEvent[]): Promise<void> {
    this.counters.eventBatches++;
    const changes = new PeerChangeLog(this.ctx.log, events.length);
    for (const event of events) await this.applyEvent(event, changes);
    changes.done();
    await this.kernel.submit();
  }

  private async applyEvent(event: LeaseEvent, changes: PeerChangeLog): Promise<void> {
    const { lease } = event;
    const key = lease.subnet.toString();
    const ticket = this.latest.begin(key);
    if (event.type === 'removed') {
      this.latest.forget(key);
      this.direct.delete(key);
      if (this.kernel.delete(key)) this.ctx.log.info({ subnet: key }, 'removing subnet');
      return;
    }
    if (this.ownLease?.subnet.equals(lease.subnet)) return;
    const found = vxlanSides(lease, this.v6 !== null);
    if ('error' in found) {
      this.counters.skippedLeases++;
      this.direct.delete(key);
      this.kernel.delete(key);
      this.ctx.log.warn({ subnet: key, publicIP: lease.attrs.publicIP, reason: found.error }, 'ignoring lease');
      return;
    }
    if (found.missingV6) {
      this.counters.v6SkippedLeases++;
      this.ctx.log.warn({ subnet: key, reason: found.missingV6 }, 'lease has no usable IPv6 vxlan side: its IPv6 subnet is not routed');
    }
    const entries: KernelEntry[] = [];
    let direct = false;
    for (const side of found.sides) {
      const dev = side.family === 4 ? this.v4.name : this.v6!.name;
      const directDev = await this.directDev(side.publicIP);
      direct ||= directDev !== null;
      entries.push(...sideEntries(side, dev, directDev));
    }
    // A newer event for this peer came in during a lookup: it decides.
    if (!this.latest.isLatest(key, ticket)) return;
    const known = this.kernel.hasOwner(key);
    if (!this.kernel.set(key, entries)) return;
    if (direct) this.direct.add(key);
    else this.direct.delete(key);
    const fields = { subnet: key, publicIP: lease.attrs.publicIP, vtepMAC: found.sides[0]!.mac, direct, ipv6Subnet: lease.ipv6Subnet?.toString() ?? null };
    changes.changed(key, fields, known);
  }

  /** DirectRouting: a peer on a link of ours is routed via its public address, unencapsulated. */
  private async directDev(publicIP: number | bigint): Promise<string | null> {
    if (!this.config.directRouting) return null;
    const verdict = await this.onLink.check(publicIP);
    return 'dev' in verdict ? verdict.dev : null;
  }

  /** Resolves once everything handed over so far has been applied to the kernel. */
  settled(): Promise<void> {
    return this.kernel.settled();
  }

  /** One full pass now, behind the one running; resolves with the changes it made. */
  resync(): Promise<number> {
    return this.kernel.resync();
  }

  stats(): Record<string, number> {
    const { eventPasses, ...kernel } = this.kernel.stats();
    return {
      peers: this.kernel.owners,
      directPeers: this.direct.size,
      programmedRoutes: this.kernel.programmed('route', 4),
      ...(this.v6 ? { programmedRoutesV6: this.kernel.programmed('route', 6) } : {}),
      flushes: eventPasses ?? 0,
      ...kernel,
      ...this.counters,
      deviceRecreated: this.v4.recreated + (this.v6?.recreated ?? 0),
    };
  }

  async close(): Promise<void> {
    this.stop.abort();
    await this.kernel.close();
  }
}
