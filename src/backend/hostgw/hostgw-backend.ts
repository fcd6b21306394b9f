// The host-gw backend, as upstream flannel programs it: no device and no encapsulation, one route per
// remote node and family — its subnet via its PublicIP (and its IPv6 subnet via its PublicIPv6) on the
// underlay interface — one route set for both families, kept by the kernel reconciler
// (src/routes/reconciler.ts). It works only between nodes on one L2 segment: a peer whose address is
// not on link is logged, counted and skipped (and looked at again at every resync), and the others are
// programmed as usual. Pods use the underlay's MTU. See docs/hostgw.md.
import { Gauge } from 'prom-client';
import { kernelMetrics, metricsRegistry } from '../../common/metrics.js';
import { parseIp4 } from '../../common/ip4.js';
import { parseIp6 } from '../../common/ip6.js';
import type { HostGwBackendConfig } from '../../subnet/config.js';
import type { Lease, LeaseEvent } from '../../subnet/lease.js';
import { type Family, type IpAddr, type KernelEntry, RTPROT_KERNEL, formatIp, netFamily, unicastRoute } from '../../routes/entries.js';
import { openKernelPath } from '../../routes/path.js';
import { KernelReconciler, type KernelScope } from '../../routes/reconciler.js';
import type { Backend, BackendAnnouncement, BackendContext } from '../backend.js';
import { LatestEvent } from '../latest-event.js';
import { OnLinkCheck } from '../on-link.js';

export const hostGwMetrics = {
  offLink: new Gauge({
    name: 'flannel_hostgw_peers_not_on_link',
    help: 'Remote nodes (per family) host-gw cannot route to because their address is not on the underlay link.',
    labelNames: ['family'] as const,
    registers: [metricsRegistry],
  }),
};

export interface HostGwBackendOptions {
  /** Program this named network namespace instead of our own (tests). */
  netns?: string;
  /** How often the routes are checked and repaired; default 5000 ms, 0 disables. */
  resyncIntervalMs?: number;
  /** How routes reach the kernel: rtnetlink from the addon (default when it is built) or `ip -batch`. */
  kernelPath?: 'netlink' | 'iproute2';
}

export class HostGwBackend implements Backend {
  private readonly kernel: KernelReconciler;
  private readonly stop = new AbortController();
  private readonly onLink: OnLinkCheck;
  /** Remote host-gw leases by subnet: their routes are decided (and skipped peers looked at again) from these. */
  private readonly peers = new Map<string, Lease>();
  /** Peers skipped per family because not on link, by subnet → the address: each is logged once, counted while it lasts. */
  private readonly offLink: Record<Family, Map<string, string>> = { 4: new Map(), 6: new Map() };
  private own: Lease | null = null;
  /** An event whose on-link lookup finished after a newer one for the same peer began is dropped. */
  private readonly latest = new LatestEvent();
  private readonly counters = { eventBatches: 0, skippedLeases: 0 };

  constructor(
    readonly ctx: BackendContext,
    readonly config: HostGwBackendConfig,
    options: HostGwBackendOptions = {},
  ) {
    const ipOpts = options.netns ? { netns: options.netns } : {};
    this.onLink = new OnLinkCheck(ctx.extIface.name, ipOpts);
    this.kernel = new KernelReconciler({
      name: 'host-gw',
      log: ctx.log,
      path: openKernelPath(options.kernelPath ?? 'netlink', options.netns, ctx.log),
      scope: () => this.scope(),
      signal: this.stop.signal,
      resyncIntervalMs: options.resyncIntervalMs ?? 5000,
      // The underlay's prefixes may have changed (an address added): skipped peers get another look.
      beforePass: async (reasons) => {
        if (reasons.has('resync')) await this.recheckOffLink();
        return 0;
      },
    });
  }

  private get dev(): string {
    return this.ctx.extIface.name;
  }

  /**
   * Routes of ours: gatewayed, on the underlay, subnet-sized, inside the Network. Our own subnet's among
   * them: our pods are behind the CNI bridge (a route without a gateway), so a route to our subnet via a
   * peer is what its previous holder's peer route left behind — kept, it would send our pods' traffic away.
   */
  private scope(): KernelScope {
    const { network, subnetLen, ipv6 } = this.ctx.network;
    return {
      routeRoots: ipv6 ? [network, ipv6.network] : [network],
      devices: [],
      owns: (e: KernelEntry) => {
        if (e.kind !== 'route' || e.type !== 'unicast' || e.protocol === RTPROT_KERNEL || e.dev !== this.dev || e.via === null) return false;
        return e.dst.prefixLen === (netFamily(e.dst) === 4 ? subnetLen : ipv6?.subnetLen);
      },
    };
  }

  async prepare(): Promise<BackendAnnouncement> {
    if (this.ctx.network.ipv6 && !this.ctx.extIface.publicIPv6) {
      throw new Error(`host-gw: EnableIPv6 is set but ${this.dev} has no global IPv6 address (choose one with --public-ipv6 or an interface that has one)`);
    }
    await this.onLink.refresh();
    return { backend: { type: 'host-gw' }, mtu: this.ctx.extIface.mtu };
  }

  async setOwnLease(lease: Lease): Promise<void> {
    this.own = lease;
    // After a move our new subnet may still be known as a peer's: it must not be routed away.
    this.peers.delete(lease.subnet.toString());
    if (this.kernel.delete(lease.subnet.toString()) && this.kernel.complete) await this.kernel.request();
  }

  /** Puts the events into the reconciler's model and asks for a pass; only the first call waits for the kernel. */
  async handleLeaseEvents(events: readonly LeaseEvent[]): Promise<void> {
    this.counters.eventBatches++;
    for (const event of events) await this.applyEvent(event);
    kernelMetrics.peers.set({ backend: 'host-gw' }, this.peers.size);
    await this.kernel.submit();
  }

  private async applyEvent(event: LeaseEvent): Promise<void> {
    const { lease } = event;
    const key = lease.subnet.toString();
    const ticket = this.latest.begin(key);
    if (event.type === 'removed') {
      this.latest.forget(key);
      this.forgetOffLink(key);
      this.peers.delete(key);
      if (this.kernel.delete(key)) this.ctx.log.info({ subnet: key, ipv6Subnet: lease.ipv6Subnet?.toString() ?? null }, 'removing subnet');
      return;
    }
    if (this.own?.subnet.equals(lease.subnet)) return;
    if (lease.attrs.backend.type !== 'host-gw') {
      this.counters.skippedLeases++;
      this.peers.delete(key);
      this.kernel.delete(key);
      this.ctx.log.warn({ subnet: key, publicIP: lease.attrs.publicIP, backendType: lease.attrs.backend.type }, 'ignoring lease: its node does not use the host-gw backend');
      return;
    }
    const entries = await this.routesOf(lease, true);
    // A newer event for this peer came in during a lookup: it decides.
    if (!this.latest.isLatest(key, ticket)) return;
    this.peers.set(key, lease);
    const known = this.kernel.hasOwner(key);
    if (!this.kernel.set(key, entries)) return;
    const v6 = entries.find((e) => e.kind === 'route' && netFamily(e.dst) === 6);
    this.ctx.log.info(
      { subnet: key, publicIP: lease.attrs.publicIP, ipv6Subnet: v6?.kind === 'route' ? v6.dst.toString() : null, publicIPv6: v6?.kind === 'route' && v6.via !== null ? formatIp(v6.via) : null },
      known ? 'updating subnet' : 'adding subnet',
    );
  }

  /** The routes a peer's lease needs: one per family whose address is on link. */
  private async routesOf(lease: Lease, warn: boolean): Promise<KernelEntry[]> {
    const key = lease.subnet.toString();
    const entries: KernelEntry[] = [];
    const via4 = parseIp4(lease.attrs.publicIP);
    if (await this.reachable(4, key, via4)) entries.push(unicastRoute(lease.subnet, this.dev, via4));
    const v6Subnet = lease.ipv6Subnet ?? null;
    if (this.ctx.network.ipv6 && v6Subnet) {
      const via6 = lease.attrs.publicIPv6;
      if (!via6) {
        if (warn) this.ctx.log.warn({ subnet: key, ipv6Subnet: v6Subnet.toString() }, 'lease has an IPv6 subnet but no PublicIPv6: its IPv6 subnet is not routed');
      } else if (await this.reachable(6, key, parseIp6(via6))) {
        entries.push(unicastRoute(v6Subnet, this.dev, parseIp6(via6)));
      }
    }
    return entries;
  }

  /**
   * True when `ip` is directly reachable on the underlay link: inside one of its prefixes, or routed
   * by the kernel through it without a gateway. Otherwise the peer is logged (once) and counted.
   */
  private async reachable(family: Family, subnet: string, ip: IpAddr): Promise<boolean> {
    const verdict = await this.onLink.check(ip);
    const text = formatIp(ip);
    const skipped = this.offLink[family];
    if ('dev' in verdict && verdict.dev === this.dev) {
      if (skipped.delete(subnet)) hostGwMetrics.offLink.set({ family: `ipv${family}` }, skipped.size);
      return true;
    }
    const why = 'why' in verdict ? verdict.why : `${text} is reached through ${verdict.dev}, not ${this.dev}`;
    if (skipped.get(subnet) !== text) {
      this.ctx.log.warn(
        { subnet, family: `ipv${family}`, peer: text, dev: this.dev, reason: why },
        'host-gw: peer is not on the same L2 network (not on link); skipping its route — host-gw needs every node on one link (use vxlan otherwise)',
      );
    }
    skipped.set(subnet, text);
    hostGwMetrics.offLink.set({ family: `ipv${family}` }, skipped.size);
    return false;
  }

  private forgetOffLink(subnet: string): void {
    for (const family of [4, 6] as const) {
      if (this.offLink[family].delete(subnet)) hostGwMetrics.offLink.set({ family: `ipv${family}` }, this.offLink[family].size);
    }
  }

  private async recheckOffLink(): Promise<void> {
    const skipped = new Set([...this.offLink[4].keys(), ...this.offLink[6].keys()]);
    if (skipped.size === 0) return;
    await this.onLink.refresh();
    for (const subnet of skipped) {
      const lease = this.peers.get(subnet);
      if (lease) this.kernel.set(subnet, await this.routesOf(lease, false));
    }
  }

  stats(): Record<string, number> {
    return {
      peers: this.peers.size,
      ipv4Routes: this.kernel.programmed('route', 4),
      ipv6Routes: this.kernel.programmed('route', 6),
      notOnLinkIpv4: this.offLink[4].size,
      notOnLinkIpv6: this.offLink[6].size,
      ...this.kernel.stats(),
      ...this.counters,
    };
  }

  async close(): Promise<void> {
    this.stop.abort();
    await this.kernel.close();
  }
}
