// The wireguard backend, as upstream flannel v0.28.9 programs it: WireGuard devices (flannel-wg, and
// flannel-wg-v6 in dual-stack `separate` mode) with this node's key (keys.ts) and the configured
// ports, addressed with our subnet's network address (/32, /128), the Network(s) routed through them,
// and per remote node a peer (peers.ts): its subnet(s) as allowed IPs, its PublicIP and port as
// endpoint, the network's PSK and keepalive. The kernel module runs the devices where it exists, else
// wireguard-go, supervised (device.ts). Everything but the devices themselves is kept by the one kernel
// reconciler (src/routes/reconciler.ts): the routes through rtnetlink (or iproute2), the devices' keys
// and ports and the peers through wg(8) (src/routes/wireguard-path.ts) — a lease added, changed or
// removed touches its own peer(s) alone, a periodic full pass repairs what others changed, and after
// wireguard-go was started again (its device new and empty) a full pass puts back the key, the port,
// every peer and the routes. See docs/wireguard.md.
import type { Backend, BackendAnnouncement, BackendContext, BackendScrape, WireguardDeviceStats } from '../backend.js';
import { PeerChangeLog } from '../peer-change-log.js';
import { kernelMetrics } from '../../common/metrics.js';
import { formatIp4 } from '../../common/ip4.js';
import { formatIp6 } from '../../common/ip6.js';
import { wgKeyFingerprint } from '../../common/wg-key.js';
import { addrDeleteCommand, addrReplaceCommand } from '../../routes/addr.js';
import { type ReconciledEntry, RTPROT_KERNEL, endpointText, unicastRoute, wgDevice } from '../../routes/entries.js';
import { ipBatch } from '../../routes/ip.js';
import { linkSetCommand, readLinkState } from '../../routes/link.js';
import { openKernelPath, withWireguard } from '../../routes/path.js';
import { KernelReconciler, type KernelScope } from '../../routes/reconciler.js';
import { WgClient } from '../../routes/wg.js';
import { WireguardPath } from '../../routes/wireguard-path.js';
import { WIREGUARD_OVERHEAD, type WireguardBackendConfig } from '../../subnet/config.js';
import type { Lease, LeaseEvent } from '../../subnet/lease.js';
import { WireguardDevice } from './device.js';
import { type NodeKey, keyFilePath, loadOrCreateKey } from './keys.js';
import { WG_DEVICE, WG_DEVICE_V6, leasePeers, ownLeaseData } from './peers.js';

/** A peer whose latest handshake is older than this (or who never had one) counts as stale. */
const STALE_HANDSHAKE_MS = 180_000;
/** /metrics reads the devices at most this often; scrapes in between get the last reading. */
const SCRAPE_CACHE_MS = 1000;
const SCRAPE_TIMEOUT_MS = 2000;
/** Owners in the reconciler that are not peers. */
const DEVICES_OWNER = 'devices';
const NETWORK_OWNER = 'network';

export interface WireguardBackendOptions {
  /** Program this named network namespace instead of our own (tests). */
  netns?: string;
  /** An argv prefix for wg and wireguard-go (tests: a node's network and mount namespaces, see device.ts). */
  enter?: readonly string[];
  /** The key file; default WIREGUARD_KEY_FILE, else /run/flannel/wgkey. */
  keyFile?: string;
  /** How often the devices, peers and routes are checked and repaired; default 5000 ms, 0 disables. */
  resyncIntervalMs?: number;
  /** How routes reach the kernel: rtnetlink from the addon (default when it is built) or `ip -batch`. */
  kernelPath?: 'netlink' | 'iproute2';
}

export class WireguardBackend implements Backend {
  private readonly stop = new AbortController();
  private readonly kernel: KernelReconciler;
  private readonly wg: WgClient;
  private readonly key: NodeKey;
  /** flannel-wg, and flannel-wg-v6 in dual-stack separate mode; opened by prepare(). */
  private devices: WireguardDevice[] = [];
  private readonly names: string[];
  private own: Lease | null = null;
  /** Remote nodes with peers wanted, by subnet. */
  private readonly peers = new Set<string>();
  private readonly pskId: string | null;
  private scraped: { at: number; reading: Promise<WireguardDeviceStats[]> } | null = null;
  private readonly counters = { eventBatches: 0, skippedLeases: 0, v6SkippedLeases: 0, devicesRecreated: 0 };

  constructor(
    readonly ctx: BackendContext,
    readonly config: WireguardBackendConfig,
    private readonly options: WireguardBackendOptions = {},
  ) {
    const dual = !!ctx.network.ipv6;
    this.names = dual && config.mode === 'separate' ? [WG_DEVICE, WG_DEVICE_V6] : [WG_DEVICE];
    // Read now: a key file that exists and holds no key stops the daemon before anything is made.
    this.key = loadOrCreateKey(options.keyFile ?? keyFilePath());
    this.pskId = config.psk === null ? null : wgKeyFingerprint(config.psk);
    this.wg = new WgClient(options.enter ? { enter: options.enter } : {});
    this.kernel = new KernelReconciler({
      name: 'wireguard',
      log: ctx.log,
      path: withWireguard(
        openKernelPath(options.kernelPath ?? 'netlink', options.netns, ctx.log),
        new WireguardPath(this.wg, { privateKey: this.key.privateKey, publicKey: this.key.publicKey, presharedKey: config.psk }),
      ),
      scope: () => this.scope(),
      signal: this.stop.signal,
      resyncIntervalMs: options.resyncIntervalMs ?? 5000,
      // The devices first: peers and routes are only as good as the devices.
      beforePass: async (reasons) => (reasons.has('resync') ? this.repairDevices() : 0),
      afterApply: () => kernelMetrics.peers.set({ backend: 'wireguard' }, this.peers.size),
    });
    // Each device's key and port, and the Network(s) through the device(s) of their family.
    this.kernel.set(DEVICES_OWNER, this.names.map((dev) => wgDevice(dev, this.key.publicKey, dev === WG_DEVICE_V6 ? config.listenPortV6 : config.listenPort)));
    const v6Dev = this.names.includes(WG_DEVICE_V6) ? WG_DEVICE_V6 : WG_DEVICE;
    const ipv6 = ctx.network.ipv6;
    this.kernel.set(NETWORK_OWNER, [unicastRoute(ctx.network.network, WG_DEVICE), ...(ipv6 ? [unicastRoute(ipv6.network, v6Dev)] : [])]);
  }

  /** The devices' MTU: Backend.MTU (or the underlay's) less WireGuard's 80 bytes, as upstream. */
  get mtu(): number {
    return (this.config.mtu ?? this.ctx.extIface.mtu) - WIREGUARD_OVERHEAD;
  }

  private get ipOpts(): { netns?: string } {
    return this.options.netns ? { netns: this.options.netns } : {};
  }

  /**
   * Ours: routes through our devices inside the Network(s) (not the kernel's own), and every peer on our
   * devices — a peer nobody wants is one whose lease went while we were down, or someone else's
   * addition. The devices' own settings are wanted, never removed.
   */
  private scope(): KernelScope {
    const { network, ipv6 } = this.ctx.network;
    const names = this.names;
    return {
      routeRoots: ipv6 ? [network, ipv6.network] : [network],
      devices: [],
      wgDevices: names,
      owns: (e: ReconciledEntry) => {
        if (e.kind === 'wgpeer') return names.includes(e.dev);
        return e.kind === 'route' && e.type === 'unicast' && e.protocol !== RTPROT_KERNEL && e.dev !== null && names.includes(e.dev);
      },
    };
  }

  async prepare(): Promise<BackendAnnouncement> {
    const { ctx, config, key } = this;
    if (ctx.network.ipv6 && !ctx.extIface.publicIPv6) {
      throw new Error(`wireguard: EnableIPv6 is set but ${ctx.extIface.name} has no global IPv6 address (choose one with --public-ipv6 or an interface that has one)`);
    }
    const least = ctx.network.ipv6 ? 1280 : 68;
    if (this.mtu < least) {
      throw new Error(`wireguard: ${config.mtu === null ? `${ctx.extIface.name}'s MTU` : 'Backend.MTU'} ${config.mtu ?? ctx.extIface.mtu} leaves ${this.mtu} for ${WG_DEVICE}, below IPv${ctx.network.ipv6 ? 6 : 4}'s minimum of ${least}`);
    }
    if (key.created) ctx.log.info({ file: key.file, publicKey: key.publicKey }, 'wireguard: made a new key pair');
    else ctx.log.info({ file: key.file, publicKey: key.publicKey }, 'wireguard: using the key pair kept in the key file');
    if (key.tightened) ctx.log.warn({ file: key.file }, 'wireguard: the key file could be read by others; its mode is now 0600');
    if (this.devices.length === 0) {
      for (const name of this.names) {
        this.devices.push(await WireguardDevice.open({
          name,
          mtu: this.mtu,
          log: ctx.log,
          ...(this.options.netns ? { netns: this.options.netns } : {}),
          ...(this.options.enter ? { enter: this.options.enter } : {}),
          onRecreated: () => this.recreated(name),
        }));
      }
    }
    return {
      backend: ownLeaseData(config, key.publicKey, !!ctx.network.ipv6),
      mtu: this.mtu,
    };
  }

  /** Which implementation runs the devices ("kernel" or "wireguard-go"); null before prepare(). */
  get implementation(): string | null {
    return this.devices[0]?.implementation ?? null;
  }

  /** wireguard-go was started again: its device is new and empty. Everything goes back in with a full pass. */
  private recreated(dev: string): void {
    this.counters.devicesRecreated++;
    this.ctx.log.warn({ device: dev }, 'wireguard: device recreated; applying its key, port, peers, addresses and routes again');
    void this.kernel.resync();
  }

  async setOwnLease(lease: Lease): Promise<void> {
    this.own = lease;
    // After a move our new subnet may still be known as a peer's: it must not be sent into the tunnel.
    this.peers.delete(lease.subnet.toString());
    this.kernel.delete(lease.subnet.toString());
    await this.kernel
      .exclusive(async () => {
        for (const dev of this.names) await this.address(dev, false);
      })
      .catch((err: unknown) => {
        this.kernel.countError('address');
        this.ctx.log.error({ err }, 'wireguard backend: cannot address the device');
        throw err;
      });
    // A move re-addresses the devices: check every entry against the kernel now, not in 5 s.
    if (this.kernel.complete) await this.kernel.resync();
  }

  /** The addresses `dev` carries: our subnet's network address of each family it serves, alone. */
  private wantedAddresses(dev: string): string[] {
    const own = this.own;
    if (!own) return [];
    const v6 = this.ctx.network.ipv6 && own.ipv6Subnet ? `${formatIp6(own.ipv6Subnet.ip)}/128` : null;
    const v4 = `${formatIp4(own.subnet.ip)}/32`;
    if (this.names.length === 2) return dev === WG_DEVICE ? [v4] : v6 ? [v6] : [];
    return v6 ? [v4, v6] : [v4];
  }

  /**
   * Puts our addresses on `dev` (the new ones before the stale ones go: a device left without an
   * address loses every route through it), its MTU, and sets it up. With `onlyIfWrong`, does nothing
   * when all is as it should be; returns whether it changed anything.
   */
  private async address(dev: string, onlyIfWrong: boolean): Promise<boolean> {
    const want = this.wantedAddresses(dev);
    const state = await readLinkState(dev, this.ipOpts);
    if (!state) throw new Error(`wireguard: device ${dev} does not exist`);
    const global = state.addrs.filter((a) => a.scope === 'global');
    const stale = global.filter((a) => !want.includes(a.cidr));
    const fine = state.up && state.mtu === this.mtu && stale.length === 0 && want.every((w) => global.some((a) => a.cidr === w));
    if (fine && onlyIfWrong) return false;
    await ipBatch([
      ...want.map((cidr) => addrReplaceCommand(dev, cidr)),
      ...stale.map((a) => addrDeleteCommand(dev, a.cidr)),
      linkSetCommand(dev, { mtu: this.mtu, up: true }),
    ], this.ipOpts);
    return !fine;
  }

  /** Before every full pass: each device exists, is up, has its MTU and exactly our addresses. */
  private async repairDevices(): Promise<number> {
    let repairs = 0;
    for (const device of this.devices) {
      if (await device.ensure()) {
        this.counters.devicesRecreated++;
        repairs++;
      }
      // wireguard-go being started again: its supervision calls recreated() once it runs.
      if (device.implementation === 'wireguard-go' && !(await readLinkState(device.name, this.ipOpts))) continue;
      if (await this.address(device.name, true)) {
        this.ctx.log.warn({ device: device.name }, 'wireguard: device was down, wrongly addressed or of another MTU; restored');
        repairs++;
      }
    }
    return repairs;
  }

  /**
   * Puts the events into the reconciler's model and asks for a pass. The first call (every lease
   * there is) resolves once the full pass is done; later ones once their events are in the model.
   */
  async handleLeaseEvents(events: readonly LeaseEvent[]): Promise<void> {
    this.counters.eventBatches++;
    const changes = new PeerChangeLog(this.ctx.log, events.length);
    for (const event of events) this.applyEvent(event, changes);
    changes.done();
    kernelMetrics.peers.set({ backend: 'wireguard' }, this.peers.size);
    await this.kernel.submit();
  }

  private applyEvent(event: LeaseEvent, changes: PeerChangeLog): void {
    const { lease } = event;
    const key = lease.subnet.toString();
    if (event.type === 'removed') {
      this.peers.delete(key);
      if (this.kernel.delete(key)) this.ctx.log.info({ subnet: key }, 'removing subnet');
      return;
    }
    if (this.own?.subnet.equals(lease.subnet)) return;
    const found = leasePeers(lease, { config: this.config, ipv6: !!this.ctx.network.ipv6, ownPublicIPv6: this.ctx.extIface.publicIPv6 ?? null, psk: this.pskId });
    if ('error' in found) {
      this.counters.skippedLeases++;
      this.peers.delete(key);
      this.kernel.delete(key);
      this.ctx.log.warn({ subnet: key, publicIP: lease.attrs.publicIP, reason: found.error }, 'ignoring lease');
      return;
    }
    if (found.missing) {
      this.counters.v6SkippedLeases++;
      this.ctx.log.warn({ subnet: key, reason: found.missing }, 'lease has no usable IPv6 wireguard side: its IPv6 subnet is not routed');
    }
    const known = this.kernel.hasOwner(key);
    this.peers.add(key);
    if (!this.kernel.set(key, found.peers)) return;
    const first = found.peers[0]!;
    const fields = {
      subnet: key,
      ipv6Subnet: lease.ipv6Subnet?.toString() ?? null,
      publicKey: first.publicKey,
      endpoints: found.peers.map((p) => `${p.dev} ${p.endpoint ? endpointText(p.endpoint) : '-'}`),
    };
    changes.changed(key, fields, known);
  }

  /** Resolves once everything handed over so far has been applied. */
  settled(): Promise<void> {
    return this.kernel.settled();
  }

  /** One full pass now, behind the one running; resolves with the changes it made. */
  resync(): Promise<number> {
    return this.kernel.resync();
  }

  /**
   * Per device, read from `wg show <dev> dump` when /metrics is scraped: peers, those without a
   * handshake in the last 3 minutes, bytes each way. One read per device at a time and at most one a
   * second (scrapes in between share it), each with a 2 s deadline: a scrape stays cheap and bounded.
   */
  scrape(): Promise<BackendScrape> {
    const now = Date.now();
    if (!this.scraped || now - this.scraped.at >= SCRAPE_CACHE_MS) this.scraped = { at: now, reading: this.readDevices() };
    return this.scraped.reading.then((wireguard) => ({ wireguard }));
  }

  private async readDevices(): Promise<WireguardDeviceStats[]> {
    const client = new WgClient({ ...(this.options.enter ? { enter: this.options.enter } : {}), timeoutMs: SCRAPE_TIMEOUT_MS });
    const out: WireguardDeviceStats[] = [];
    for (const device of this.names) {
      const state = await client.showIfPresent(device).catch(() => null);
      if (!state) continue;
      const since = Date.now() - STALE_HANDSHAKE_MS;
      out.push({
        device,
        peers: state.peers.length,
        staleHandshakes: state.peers.filter((p) => p.latestHandshake === null || p.latestHandshake.getTime() < since).length,
        rxBytes: state.peers.reduce((n, p) => n + p.rxBytes, 0),
        txBytes: state.peers.reduce((n, p) => n + p.txBytes, 0),
      });
    }
    return out;
  }

  stats(): Record<string, number> {
    return {
      peers: this.peers.size,
      programmedPeers: this.kernel.programmed('wgpeer', 4),
      programmedPeersV6: this.kernel.programmed('wgpeer', 6),
      programmedRoutes: this.kernel.programmed('route'),
      userspace: this.implementation === 'wireguard-go' ? 1 : 0,
      ...this.kernel.stats(),
      ...this.counters,
    };
  }

  /** Stops the reconciler, then the devices: wireguard-go with them, a kernel device stays (docs/wireguard.md). */
  async close(): Promise<void> {
    this.stop.abort();
    await this.kernel.close();
    for (const device of this.devices) await device.close();
  }
}
