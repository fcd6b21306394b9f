// The host-gw backend, as upstream flannel programs it: no device and no encapsulation, one route per
// remote node and family — its subnet via its PublicIP (and its IPv6 subnet via its PublicIPv6) on the
// underlay interface. It works only between nodes on one L2 segment: a peer whose address is not on
// link is logged, counted and skipped, and the others are programmed as usual. Pods use the
// underlay's MTU. This class holds the wanted routes and makes the kernel match them: after each
// burst of lease events (coalesced: batches arriving during a sync are applied by one more sync), and
// every few seconds to repair routes deleted by hand or left from an earlier run. See docs/hostgw.md.
import { CoalescedPass } from '../../common/coalesced-pass.js';
import { Gauge } from 'prom-client';
import { kernelMetrics, metricsRegistry } from '../../common/metrics.js';
import { IpCommandError, ipBatch, type IpOptions } from '../../routes/ip.js';
import type { HostGwBackendConfig } from '../../subnet/config.js';
import { Ip4Net, parseIp4 } from '../../common/ip4.js';
import { Ip6Net, formatIp6, parseIp6 } from '../../common/ip6.js';
import type { Lease, LeaseEvent } from '../../subnet/lease.js';
import type { Backend, BackendAnnouncement, BackendContext } from '../backend.js';
import { type Family, failedBatchLines, listDevAddrs, listDevRoutes, planRoutes, routeLookup } from './routes.js';

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
}

/** One remote node's routes; a family is null when the lease has none or its address is not on link. */
interface Peer {
  subnet: Ip4Net;
  publicIP: string;
  v4: { dst: string; via: string } | null;
  v6: { dst: string; via: string } | null;
}

export class HostGwBackend implements Backend {
  private readonly ipOpts: IpOptions;
  private readonly peers = new Map<string, Peer>();
  /** Peers skipped per family because not on link, by subnet: each is logged once, counted while it lasts. */
  private readonly offLink = { 4: new Map<string, string>(), 6: new Map<string, string>() };
  /** The IPv6 subnet of each peer's lease, by IPv4 subnet, for rechecks of skipped peers. */
  private readonly ipv6Dst = new Map<string, string>();
  private onLink4: Ip4Net[] = [];
  private onLink6: Ip6Net[] = [];
  private own: Lease | null = null;
  private timer: NodeJS.Timeout | null = null;
  /** The sync in flight, and whether another is needed after it (events came meanwhile). */
  /** Kernel passes: requests made while one runs share one more pass after it. */
  private readonly passes = new CoalescedPass<'event' | 'resync'>(
    (reason) => this.syncOnce(reason),
    (err) => {
      // Logged and counted, never thrown into the event path: the next resync retries.
      this.counters.errors++;
      this.ctx.log.error({ err: (err as Error).message }, 'host-gw: kernel update failed');
    },
  );
  private started = false;
  private readonly counters = { eventBatches: 0, syncs: 0, resyncs: 0, repairs: 0, errors: 0, refusedRoutes: 0, skippedLeases: 0 };

  constructor(
    readonly ctx: BackendContext,
    readonly config: HostGwBackendConfig,
    private readonly options: HostGwBackendOptions = {},
  ) {
    this.ipOpts = options.netns ? { netns: options.netns } : {};
  }

  private get dev(): string {
    return this.ctx.extIface.name;
  }

  private get ipv6Enabled(): boolean {
    return !!this.ctx.network.ipv6;
  }

  async prepare(): Promise<BackendAnnouncement> {
    if (this.ipv6Enabled && !this.ctx.extIface.publicIPv6) {
      throw new Error(`host-gw: EnableIPv6 is set but ${this.dev} has no global IPv6 address (choose one with --public-ipv6 or an interface that has one)`);
    }
    await this.readOnLinkPrefixes();
    return { backend: { type: 'host-gw' }, mtu: this.ctx.extIface.mtu };
  }

  private async readOnLinkPrefixes(): Promise<void> {
    this.onLink4 = (await listDevAddrs(4, this.dev, this.ipOpts)).map((c) => Ip4Net.parse(c, true));
    this.onLink6 = this.ipv6Enabled ? (await listDevAddrs(6, this.dev, this.ipOpts)).map((c) => Ip6Net.parse(c, true)) : [];
  }

  async setOwnLease(lease: Lease): Promise<void> {
    this.own = lease;
    // After a move our new subnet may still be known as a peer's: it must not be routed away.
    if (this.peers.delete(lease.subnet.toString()) && this.started) await this.sync('event');
  }

  async handleLeaseEvents(events: readonly LeaseEvent[]): Promise<void> {
    this.counters.eventBatches++;
    for (const event of events) await this.applyEvent(event);
    // The wanted set is complete from the first batch on: from then, syncs may remove routes.
    this.started = true;
    this.startResync();
    await this.sync('event');
  }

  private async applyEvent(event: LeaseEvent): Promise<void> {
    const { lease } = event;
    const key = lease.subnet.toString();
    if (event.type === 'removed') {
      this.forgetOffLink(key);
      this.ipv6Dst.delete(key);
      if (this.peers.delete(key)) this.ctx.log.info({ subnet: key, ipv6Subnet: lease.ipv6Subnet?.toString() ?? null }, 'removing subnet');
      return;
    }
    if (this.own?.subnet.equals(lease.subnet)) return;
    if (lease.attrs.backend.type !== 'host-gw') {
      this.counters.skippedLeases++;
      this.peers.delete(key);
      this.ctx.log.warn({ subnet: key, publicIP: lease.attrs.publicIP, backendType: lease.attrs.backend.type }, 'ignoring lease: its node does not use the host-gw backend');
      return;
    }
    const peer: Peer = { subnet: lease.subnet, publicIP: lease.attrs.publicIP, v4: null, v6: null };
    if (await this.reachable(4, key, lease.attrs.publicIP)) peer.v4 = { dst: key, via: lease.attrs.publicIP };
    const v6Subnet = lease.ipv6Subnet ?? null;
    if (v6Subnet) this.ipv6Dst.set(key, v6Subnet.toString());
    else this.ipv6Dst.delete(key);
    if (this.ipv6Enabled && v6Subnet) {
      const via = lease.attrs.publicIPv6;
      if (!via) {
        this.ctx.log.warn({ subnet: key, ipv6Subnet: v6Subnet.toString() }, 'lease has an IPv6 subnet but no PublicIPv6: its IPv6 subnet is not routed');
      } else if (await this.reachable(6, key, via)) {
        peer.v6 = { dst: v6Subnet.toString(), via: formatIp6(parseIp6(via)) };
      }
    }
    const old = this.peers.get(key);
    if (!old || old.v4?.via !== peer.v4?.via || old.v6?.dst !== peer.v6?.dst || old.v6?.via !== peer.v6?.via) {
      this.ctx.log.info({ subnet: key, publicIP: peer.publicIP, ipv6Subnet: peer.v6?.dst ?? null, publicIPv6: peer.v6?.via ?? null }, old ? 'updating subnet' : 'adding subnet');
    }
    this.peers.set(key, peer);
  }

  /**
   * True when `ip` is directly reachable on the underlay link: inside one of its prefixes, or routed
   * by the kernel through it without a gateway. Otherwise the peer is logged (once) and counted.
   */
  private async reachable(family: Family, subnet: string, ip: string): Promise<boolean> {
    const onLink = family === 4 ? this.onLink4.some((n) => n.contains(parseIp4(ip))) : this.onLink6.some((n) => n.contains(parseIp6(ip)));
    let ok = onLink;
    let why = `${ip} is not in an on-link prefix of ${this.dev}`;
    if (!ok) {
      const lookup = await routeLookup(family, ip, this.ipOpts);
      ok = lookup !== null && lookup.gateway === null && lookup.dev === this.dev;
      if (lookup?.gateway) why = `${ip} is reached through the gateway ${lookup.gateway} on ${lookup.dev}`;
      else if (lookup && lookup.dev !== this.dev) why = `${ip} is reached through ${lookup.dev}, not ${this.dev}`;
      else if (!lookup) why = `${ip} is unreachable`;
    }
    const skipped = this.offLink[family];
    if (ok) {
      if (skipped.delete(subnet)) hostGwMetrics.offLink.set({ family: `ipv${family}` }, skipped.size);
      return true;
    }
    if (skipped.get(subnet) !== ip) {
      this.ctx.log.warn(
        { subnet, family: `ipv${family}`, peer: ip, dev: this.dev, reason: why },
        'host-gw: peer is not on the same L2 network (not on link); skipping its route — host-gw needs every node on one link (use vxlan otherwise)',
      );
    }
    skipped.set(subnet, ip);
    hostGwMetrics.offLink.set({ family: `ipv${family}` }, skipped.size);
    return false;
  }

  private forgetOffLink(subnet: string): void {
    for (const family of [4, 6] as const) {
      if (this.offLink[family].delete(subnet)) hostGwMetrics.offLink.set({ family: `ipv${family}` }, this.offLink[family].size);
    }
  }

  /**
   * Makes the kernel match the wanted routes. Calls made while a sync runs share one more sync after
   * it, so a burst of event batches costs two kernel passes, not one per batch.
   */
  private sync(reason: 'event' | 'resync'): Promise<void> {
    return this.passes.request(reason);
  }

  private async syncOnce(reason: 'event' | 'resync'): Promise<void> {
    this.counters.syncs++;
    const started = process.hrtime.bigint();
    const wanted4 = new Map<string, string>();
    const wanted6 = new Map<string, string>();
    for (const p of this.peers.values()) {
      if (p.v4) wanted4.set(p.v4.dst, p.v4.via);
      if (p.v6) wanted6.set(p.v6.dst, p.v6.via);
    }
    kernelMetrics.peers.set({ backend: 'host-gw' }, this.peers.size);
    const { network, subnetLen, ipv6 } = this.ctx.network;
    const isOurs4 = (dst: string): boolean => {
      try {
        const net = Ip4Net.parse(dst);
        return net.prefixLen === subnetLen && network.covers(net) && !(this.own?.subnet.equals(net) ?? false);
      } catch {
        return false;
      }
    };
    const isOurs6 = (dst: string): boolean => {
      if (!ipv6) return false;
      try {
        const net = Ip6Net.parse(dst);
        return net.prefixLen === ipv6.subnetLen && ipv6.network.covers(net) && !(this.own?.ipv6Subnet?.equals(net) ?? false);
      } catch {
        return false;
      }
    };
    const [have4, have6] = await Promise.all([
      listDevRoutes(4, this.dev, this.ipOpts),
      ipv6 ? listDevRoutes(6, this.dev, this.ipOpts) : Promise.resolve([]),
    ]);
    const plan4 = planRoutes(this.dev, wanted4, have4, isOurs4);
    const plan6 = ipv6 ? planRoutes(this.dev, wanted6, have6, isOurs6) : { commands: [], added: 0, removed: 0 };
    const commands = [...plan4.commands, ...plan6.commands];
    if (commands.length === 0) return;
    this.ctx.log.debug({ reason, commands }, 'applying host-gw route changes');
    let refused = 0;
    try {
      // -force: a route the kernel refuses (say, a gateway that stopped being on link) fails alone.
      await ipBatch(commands, { ...this.ipOpts, force: true });
    } catch (err) {
      if (!(err instanceof IpCommandError)) throw err;
      refused = Math.max(1, failedBatchLines(err.stderr));
      this.counters.refusedRoutes += refused;
      kernelMetrics.errors.inc({ kind: 'route' }, refused);
      this.ctx.log.warn({ refused, stderr: err.stderr.trim().slice(0, 2000) }, 'host-gw: the kernel refused some routes; the others are in place, and the next resync retries');
    }
    const applied = commands.length - refused;
    kernelMetrics.changes.inc({ kind: 'route' }, applied);
    kernelMetrics.applySeconds.observe({ reason }, Number(process.hrtime.bigint() - started) / 1e9);
    if (reason === 'resync' && applied > 0) {
      this.counters.repairs += applied;
      kernelMetrics.repairs.inc(applied);
      this.ctx.log.info({ changes: applied }, 'resync repaired host-gw routes');
    }
  }

  private startResync(): void {
    const interval = this.options.resyncIntervalMs ?? 5000;
    if (interval <= 0 || this.timer) return;
    this.timer = setInterval(() => {
      this.counters.resyncs++;
      // The underlay's prefixes may have changed (an address added): skipped peers get another look.
      void this.recheckOffLink().then(() => this.sync('resync'));
    }, interval);
    this.timer.unref();
  }

  private async recheckOffLink(): Promise<void> {
    if (this.offLink[4].size + this.offLink[6].size === 0) return;
    try {
      await this.readOnLinkPrefixes();
    } catch {
      return; // the sync reports kernel trouble
    }
    for (const [subnet, ip] of [...this.offLink[4]]) {
      const p = this.peers.get(subnet);
      if (p && (await this.reachable(4, subnet, ip))) p.v4 = { dst: subnet, via: ip };
    }
    for (const [subnet, ip] of [...this.offLink[6]]) {
      const p = this.peers.get(subnet);
      if (!p) continue;
      const dst = this.ipv6DstOf(subnet);
      if (dst && (await this.reachable(6, subnet, ip))) p.v6 = { dst, via: formatIp6(parseIp6(ip)) };
    }
  }

  private ipv6DstOf(subnet: string): string | null {
    return this.ipv6Dst.get(subnet) ?? null;
  }

  stats(): Record<string, number> {
    const peers = [...this.peers.values()];
    return {
      peers: peers.length,
      ipv4Routes: peers.filter((p) => p.v4).length,
      ipv6Routes: peers.filter((p) => p.v6).length,
      notOnLinkIpv4: this.offLink[4].size,
      notOnLinkIpv6: this.offLink[6].size,
      ...this.counters,
    };
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.passes.idle();
  }
}
