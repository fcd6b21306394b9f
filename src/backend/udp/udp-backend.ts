// The udp backend, wire-compatible with upstream flanneld's: TUN flannel0 (no packet info, MTU =
// underlay MTU - 28), one route for the whole Network through it, and each IP packet sent whole
// as one UDP datagram (port 8285 by default) to the PublicIP of the lease covering its
// destination. The forwarding runs in the native addon's threads (src/native/); this class keeps
// its table in step with the leases (table swaps on a Scheduler, spaced), and flannel0's route
// through the kernel reconciler, whose periodic pass also repairs the device. See docs/udp.md.
import { performance } from 'node:perf_hooks';
import type { Backend, BackendAnnouncement, BackendContext } from '../backend.js';
import { kernelMetrics } from '../../common/metrics.js';
import { Scheduler } from '../../common/scheduler.js';
import { addrDeleteCommand, addrReplaceCommand, readAddrs } from '../../routes/addr.js';
import { type KernelEntry, RTPROT_KERNEL, unicastRoute } from '../../routes/entries.js';
import { ipBatch } from '../../routes/ip.js';
import { openKernelPath } from '../../routes/path.js';
import { KernelReconciler } from '../../routes/reconciler.js';
import type { UdpBackendConfig } from '../../subnet/config.js';
import { formatIp4, isIp4, parseIp4 } from '../../common/ip4.js';
import type { Lease, LeaseEvent } from '../../subnet/lease.js';
import { UdpForwarder, type ForwarderFeatures, type ForwarderRoute } from './native.js';

/** IPv4 header (20) + UDP header (8): what encapsulation adds to each packet. */
export const UDP_ENCAP_OVERHEAD = 28;
export const UDP_DEVICE = 'flannel0';
/**
 * A swap copies the whole table, so the next one starts no sooner than this many times the last
 * one's cost after it: during a burst of watch responses, swapping takes at most a fifth of the time.
 */
const SWAP_SPACING = 4;

export interface UdpBackendOptions {
  /** Create the device and run `ip` inside this named network namespace (tests); default: ours. */
  netns?: string;
  /** Forwarding threads (each with its own TUN queue); default 1, which measured fastest here. */
  workers?: number;
  /** How often flannel0, its address and the Network route are checked and repaired; default 5 s. */
  resyncIntervalMs?: number;
  /** How the route reaches the kernel: rtnetlink from the addon (default when it is built) or `ip -batch`. */
  kernelPath?: 'netlink' | 'iproute2';
}

export class UdpBackend implements Backend {
  readonly mtu: number;
  private forwarder: UdpForwarder | null = null;
  private own: Lease | null = null;
  /** Remote udp leases by subnet key, as forwarding-table rows; the table is rebuilt from these on a swap. */
  private readonly remotes = new Map<string, ForwarderRoute>();
  /** Table rows changed since the last swap (for the changes metric). */
  private changedSinceSwap = 0;
  private swapCount = 0;
  /** Leases we cannot use, by subnet key, so that each is reported once, not at every renewal. */
  private readonly ignored = new Set<string>();
  private synced = false;
  private readonly stop = new AbortController();
  /** Table swaps: requests before a swap starts share it; swaps are spaced by their cost. */
  private readonly swaps: Scheduler<'leases'>;
  /** flannel0's Network route, and the periodic repair of the device. */
  private readonly kernel: KernelReconciler;

  constructor(
    readonly ctx: BackendContext,
    readonly config: UdpBackendConfig,
    private readonly options: UdpBackendOptions = {},
  ) {
    this.mtu = ctx.extIface.mtu - UDP_ENCAP_OVERHEAD;
    this.swaps = new Scheduler<'leases'>({
      signal: this.stop.signal,
      spacing: SWAP_SPACING,
      pass: async () => this.pushTable(),
      onError: (err) => ctx.log.error({ err }, 'udp backend: table swap failed; the next lease change retries it'),
    });
    this.kernel = new KernelReconciler({
      name: 'udp',
      log: ctx.log,
      path: openKernelPath(options.kernelPath ?? 'netlink', options.netns, ctx.log),
      scope: () => ({
        routeRoots: [ctx.network.network],
        devices: [],
        owns: (e: KernelEntry) => e.kind === 'route' && e.dev === UDP_DEVICE && e.type === 'unicast' && e.protocol !== RTPROT_KERNEL,
      }),
      signal: this.stop.signal,
      resyncIntervalMs: options.resyncIntervalMs ?? 5000,
      beforePass: async (reasons) => (reasons.has('resync') ? this.repair() : 0),
    });
    // One route for the whole Network via flannel0 (scope global, as upstream), whatever holds it now.
    this.kernel.set('network', [unicastRoute(ctx.network.network, UDP_DEVICE)]);
  }

  private get ipOpts(): { netns?: string } {
    return this.options.netns ? { netns: this.options.netns } : {};
  }

  async prepare(): Promise<BackendAnnouncement> {
    if (this.mtu < 68) {
      throw new Error(`udp backend: ${this.ctx.extIface.name} MTU ${this.ctx.extIface.mtu} leaves ${this.mtu} for ${UDP_DEVICE}, below the IPv4 minimum of 68`);
    }
    if (!isIp4(this.ctx.extIface.ifaceIP)) throw new Error(`udp backend: interface address "${this.ctx.extIface.ifaceIP}" is not IPv4`);
    await this.kernel.exclusive(async () => {
      if (!this.forwarder) this.startForwarder();
    });
    // The wanted route is all there is from the start: the periodic repair may run at once.
    this.kernel.startPeriodic();
    await this.kernel.request();
    return { backend: { type: 'udp' }, mtu: this.mtu };
  }

  async setOwnLease(lease: Lease): Promise<void> {
    this.own = lease;
    this.remotes.delete(lease.subnet.toKey());
    this.pushTable();
    await this.kernel.exclusive(() => this.addressDevice());
    this.ctx.log.info({ device: UDP_DEVICE, address: this.ownAddress(), subnet: lease.subnet.toString() }, 'udp backend: own lease set');
  }

  /**
   * Updates the table rows and asks for a table swap. Each swap copies the whole table, so swaps are
   * coalesced: none when nothing changed; calls made before the swap starts share it; and the next
   * swap starts no sooner than SWAP_SPACING × (the last swap's cost) after the last one ended. The
   * first call resolves once its table is in the forwarder; later ones once their events are in the
   * table rows. `settled()` waits for the swap.
   */
  async handleLeaseEvents(events: readonly LeaseEvent[]): Promise<void> {
    const first = !this.synced;
    if (!this.synced) {
      // The first batch lists every lease there is: whatever we knew before is superseded.
      this.changedSinceSwap += this.remotes.size;
      this.remotes.clear();
      this.synced = true;
    }
    for (const event of events) {
      const lease = event.lease;
      const key = lease.subnet.toKey();
      if (this.own && lease.subnet.equals(this.own.subnet)) continue;
      if (event.type === 'removed') {
        this.ignored.delete(key);
        if (this.remotes.delete(key)) {
          this.changedSinceSwap++;
          this.ctx.log.info({ subnet: lease.subnet.toString() }, 'udp backend: subnet removed');
        }
        continue;
      }
      const reason = this.unusable(lease);
      if (reason) {
        if (this.remotes.delete(key)) this.changedSinceSwap++;
        if (!this.ignored.has(key)) this.ctx.log.warn({ subnet: lease.subnet.toString(), publicIP: lease.attrs.publicIP, reason }, 'udp backend: ignoring lease');
        this.ignored.add(key);
        continue;
      }
      this.ignored.delete(key);
      const peer = parseIp4(lease.attrs.publicIP);
      const known = this.remotes.get(key);
      if (known?.peer === peer) continue;
      this.remotes.set(key, { subnet: lease.subnet, peer, port: this.config.port });
      this.changedSinceSwap++;
      const fields = { subnet: lease.subnet.toString(), publicIP: lease.attrs.publicIP };
      if (events.length <= 20) this.ctx.log.info(fields, 'udp backend: subnet added');
      else this.ctx.log.debug(fields, 'udp backend: subnet added');
    }
    if (events.length > 20) this.ctx.log.info({ events: events.length, leases: this.remotes.size }, 'udp backend: lease batch');
    if (!first && this.changedSinceSwap === 0) return;
    const swapped = this.swaps.request('leases');
    if (first) await swapped;
  }

  /** Resolves once every lease handed over so far is in the forwarder's table. */
  async settled(): Promise<void> {
    await this.swaps.idle();
  }

  stats(): Record<string, number> {
    return this.forwarder ? { ...this.forwarder.stats(), leases: this.remotes.size, tableSwaps: this.swapCount } : {};
  }

  async close(): Promise<void> {
    this.stop.abort();
    await this.swaps.idle();
    await this.kernel.close();
    // Joins the forwarding threads; closing the TUN removes flannel0 and its route, as upstream.
    this.forwarder?.close();
    this.forwarder = null;
  }

  /** One repair pass now (the periodic one, on demand): flannel0, its address and the Network route. */
  async resyncNow(): Promise<void> {
    await this.kernel.resync();
  }

  private startForwarder(): void {
    // The TUN exists only while we hold it open (as upstream's): a restart recreates it.
    this.forwarder = new UdpForwarder({
      tunName: UDP_DEVICE,
      mtu: this.mtu,
      bindAddress: parseIp4(this.ctx.extIface.ifaceIP),
      port: this.config.port,
      workers: this.options.workers ?? 1,
      ...(this.options.netns ? { netns: this.options.netns } : {}),
    });
    const features: ForwarderFeatures = this.forwarder.features();
    this.ctx.log.info(
      { device: UDP_DEVICE, mtu: this.mtu, bind: `${this.ctx.extIface.ifaceIP}:${this.config.port}`, ...features },
      'udp backend: data path started',
    );
    this.pushTable();
  }

  /** Rebuilds the data path if flannel0 went away, and puts back its address (the pass puts back the route). */
  private async repair(): Promise<number> {
    let repairs = 0;
    const failure = this.forwarder ? this.forwarder.failure() : 'not running';
    if (failure) {
      this.ctx.log.warn({ device: UDP_DEVICE, failure }, 'udp backend: data path down; recreating flannel0');
      this.forwarder?.close();
      this.forwarder = null;
      this.startForwarder();
      repairs++;
    }
    if (await this.addressDevice()) repairs++;
    return repairs;
  }

  private ownAddress(): string | null {
    // Like upstream: the subnet's network address as a /32 (no broadcast routes), used as the
    // source of host -> pod traffic.
    return this.own ? `${formatIp4(this.own.subnet.ip)}/32` : null;
  }

  /** flannel0 carries exactly our address; returns whether it had to be changed. */
  private async addressDevice(): Promise<boolean> {
    const want = this.ownAddress();
    if (!want) return false;
    const have = (await readAddrs(UDP_DEVICE, this.ipOpts, 4)).map((a) => a.cidr);
    const stale = have.filter((a) => a !== want);
    if (stale.length === 0 && have.includes(want)) return false;
    await ipBatch([...stale.map((a) => addrDeleteCommand(UDP_DEVICE, a)), addrReplaceCommand(UDP_DEVICE, want)], this.ipOpts);
    return true;
  }

  private unusable(lease: Lease): string | null {
    if (lease.attrs.backend.type !== 'udp') return `backend type is ${lease.attrs.backend.type}, not udp`;
    if (!this.ctx.network.network.covers(lease.subnet)) return `subnet is outside Network ${this.ctx.network.network}`;
    return null;
  }

  private pushTable(): void {
    if (!this.forwarder) return;
    const started = performance.now();
    this.forwarder.setTable({
      own: this.own?.subnet ?? null,
      // Upstream sends its ICMP errors from flannel0's own address, which the kernel then drops
      // as a martian (a local source arriving from outside); the Network's base address is no
      // node's address (the first subnet is never leased by default) and routes back via flannel0.
      icmpSource: this.own ? this.ctx.network.network.ip : null,
      routes: [...this.remotes.values()],
    });
    this.swapCount++;
    kernelMetrics.applySeconds.observe({ reason: 'event' }, (performance.now() - started) / 1000);
    kernelMetrics.peers.set({ backend: 'udp' }, this.remotes.size);
    if (this.changedSinceSwap > 0) kernelMetrics.changes.inc({ kind: 'udp-route' }, this.changedSinceSwap);
    this.changedSinceSwap = 0;
  }

}
