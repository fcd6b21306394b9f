// The vxlan backend, as upstream flannel v0.20.2 programs it: one kernel VXLAN device flannel.<VNI>
// and, per remote node, a route to its subnet via the subnet's network address (onlink), a permanent
// neighbour entry mapping that address to the node's VTEP MAC, and a permanent FDB entry sending
// that MAC to the node's PublicIP. The kernel moves every packet; this class only keeps the tables
// right. Lease events update an in-memory model (model.ts) and only the differences reach the
// kernel, coalesced: whatever arrives while a batch is being applied goes into the next one. A full
// reconcile against a kernel snapshot runs first and every few seconds, and repairs what others
// changed. Each entry succeeds or fails on its own (one `-force -batch` line each).
import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { Backend, BackendAnnouncement, BackendContext } from '../backend.js';
import { kernelMetrics } from '../../common/metrics.js';
import { SerialQueue } from '../../common/serial-queue.js';
import type { VxlanBackendConfig } from '../../subnet/config.js';
import type { Lease, LeaseEvent } from '../../subnet/lease.js';
import { Ip4Net, formatIp4, parseIp4 } from '../../common/ip4.js';
import { addrDeleteCommand, addrReplaceCommand, listIp4Addrs } from '../../routes/addr.js';
import { fdbArgs, parseFdbLine } from '../../routes/fdb.js';
import { forceBatch, ipBatch, parseLines, toolBytes, type BatchOutcome, type IpOptions } from '../../routes/ip.js';
import { linkSetCommand, readLink, readLinkAddrs, type VxlanSpec } from '../../routes/link.js';
import { loadNetlink, RtNetlink, type NetlinkOp } from '../../routes/netlink.js';
import { neighboursArgs, parseNeighLine } from '../../routes/neigh.js';
import { parseRouteLine, routeGet, routesWithinArgs } from '../../routes/route.js';
import { ensureVxlanDevice } from './device.js';
import { PeerModel, type KernelOp, type KernelSnapshot } from './model.js';
import { leaseVtepMac, type Peer } from './peers.js';
import { VxlanV6Side } from './v6-side.js';

/** Per-IP encapsulation cost: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14). */
export const VXLAN_OVERHEAD = 50;

/** Above this many peers added in one batch, each is logged at debug and the batch once at info. */
const LOG_EACH_UP_TO = 20;

export interface VxlanBackendOptions {
  /** Program this named network namespace instead of our own (tests drive several "nodes" from one process). */
  netns?: string;
  /** How often the kernel tables are checked and repaired; default 5000 ms, 0 disables. */
  resyncIntervalMs?: number;
  /** How entries reach the kernel: rtnetlink from the addon (default when it is built) or `ip`/`bridge -batch`. */
  kernelPath?: 'netlink' | 'iproute2';
}

export class VxlanBackend implements Backend {
  private readonly device: string;
  private readonly ipOpts: IpOptions;
  private readonly model: PeerModel;
  private extSubnets: Ip4Net[] = [];
  private mac: string | null = null;
  private ownLease: Lease | null = null;
  private timer: NodeJS.Timeout | null = null;
  /** Kernel work, one batch at a time. */
  private readonly kernel = new SerialQueue();
  /** Event intake, in order (DirectRouting looks routes up before an event reaches the model). */
  private readonly intake = new SerialQueue();
  /** A flush queued behind the one running: every event arriving meanwhile joins it. */
  private nextFlush: Promise<void> | null = null;
  /** The first event batch has arrived: the wanted set is complete, so reconciles may delete. */
  private synced = false;
  /** A kernel snapshot has been taken: the model's programmed side is real. */
  private snapshotTaken = false;
  /** The kernel dump of the last pass that found the kernel matching the model, and the model's version then. */
  private clean: { digest: string; version: number } | null = null;
  /** Last logged failure per entry, so a refused entry is logged once per distinct error, not every resync. */
  private readonly failures = new Map<string, string>();
  /** The rtnetlink socket, or null when entries go through `ip`/`bridge -batch`. */
  private nl: RtNetlink | null = null;
  private devIndex = 0;
  private extIndex = 0;
  private readonly counters = { eventBatches: 0, flushes: 0, resyncs: 0, unchangedPasses: 0, repairs: 0, errors: 0, skippedLeases: 0, deviceRecreated: 0 };
  /** Dual stack (EnableIPv6): the flannel-v6.<VNI> device and its tables (v6-side.ts). */
  private readonly v6: VxlanV6Side | null;

  constructor(
    readonly ctx: BackendContext,
    readonly config: VxlanBackendConfig,
    private readonly options: VxlanBackendOptions = {},
  ) {
    this.device = `flannel.${config.vni}`;
    this.ipOpts = options.netns ? { netns: options.netns } : {};
    this.model = new PeerModel({ device: this.device, extIface: ctx.extIface.name, network: ctx.network.network, subnetLen: ctx.network.subnetLen });
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
    this.devIndex = link.ifindex;
    this.extIndex = (await readLink(this.ctx.extIface.name, this.ipOpts))?.ifindex ?? 0;
    if (!this.nl && (this.options.kernelPath ?? 'netlink') === 'netlink' && loadNetlink()) {
      try {
        this.nl = new RtNetlink(this.options.netns);
      } catch (err) {
        this.ctx.log.warn({ err }, 'vxlan backend: no rtnetlink socket; using ip -batch');
      }
    }
    this.extSubnets = (await listIp4Addrs(this.ctx.extIface.name, this.ipOpts)).map((a) => Ip4Net.parse(a.cidr, true));
    const vtepV6 = this.v6 ? await this.v6.prepare() : null;
    return { backend: { type: 'vxlan', vtep: { vni: this.config.vni, mac: this.mac! }, vtepV6 }, mtu: link.mtu };
  }

  async setOwnLease(lease: Lease): Promise<void> {
    this.ownLease = lease;
    await this.intake.run(async () => {
      // After a move our new subnet may still be known as a peer's (the manager drops it from its
      // known set without a 'removed' event): it must not be routed into the overlay.
      this.model.removePeer(lease.subnet.toString());
    });
    await this.kernel.run(() => this.addressDevice(lease)).catch((err: unknown) => {
      this.countError('address');
      this.ctx.log.error({ err }, 'vxlan backend: cannot address the device');
      throw err;
    });
    await this.v6?.setOwnLease(lease);
    // A move re-addresses the device: check every entry against the kernel now, not in 5 s.
    if (this.synced) await this.resync();
  }

  // The subnet's network address as /32: a source address for host-to-pod traffic that creates no
  // broadcast or prefix routes. Any other address (an old lease) is removed.
  private async addressDevice(lease: Lease): Promise<void> {
    const want = `${formatIp4(lease.subnet.ip)}/32`;
    const have = await listIp4Addrs(this.device, this.ipOpts);
    // The new address goes on before the old ones come off: a device left without any IPv4
    // address loses every route through it, which would cut every peer off until the next resync.
    await ipBatch([
      addrReplaceCommand(this.device, want),
      ...have.filter((a) => a.cidr !== want).map((a) => addrDeleteCommand(this.device, a.cidr)),
      linkSetCommand(this.device, { up: true }),
    ], this.ipOpts);
  }

  // Someone deleted our device, set it down or changed its address: recreate it (with the MAC we
  // published) and re-address it. Returns the number of repairs made.
  private async repairDevice(): Promise<number> {
    if (!this.mac) return 0; // not prepared
    // One `ip addr show` tells both whether the device exists and is up, and how it is addressed.
    const link = await readLinkAddrs(this.device, this.ipOpts);
    if (link) this.devIndex = link.ifindex;
    else {
      this.ctx.log.warn({ device: this.device }, 'vxlan device disappeared; recreating it');
      this.counters.deviceRecreated++;
      this.devIndex = (await ensureVxlanDevice(this.spec(), this.ctx.log, this.ipOpts)).ifindex;
    }
    if (!this.ownLease) return link ? 0 : 1;
    const want = `${formatIp4(this.ownLease.subnet.ip)}/32`;
    if (link?.up && link.ip4.length === 1 && link.ip4[0] === want) return 0;
    this.ctx.log.warn({ device: this.device }, 'vxlan device is down or wrongly addressed; restoring it');
    await this.addressDevice(this.ownLease);
    return 1;
  }

  /**
   * Puts the events into the model and queues a kernel batch. The first call (every lease there is)
   * resolves once the full reconcile is done, so the daemon is ready with every peer programmed.
   * Later calls resolve once their events are in the model: the caller hands over the next watch
   * response while this batch is applied, and everything that arrives meanwhile goes into the next
   * batch — that is what turns a burst into a few batches. `settled()` waits for the kernel. Never
   * rejects: refused entries are logged, counted and retried by the periodic reconcile.
   */
  async handleLeaseEvents(events: readonly LeaseEvent[]): Promise<void> {
    this.counters.eventBatches++;
    await this.intake.run(() => this.applyEvents(events));
    const first = !this.synced;
    this.synced = true;
    // The wanted set is complete from the first batch on: from then, reconciles may remove state.
    this.startResync();
    const flushed = this.requestFlush();
    // The IPv6 side coalesces its own passes and logs its own failures.
    const v6 = this.v6?.handleLeaseEvents(events);
    if (first) await Promise.all([flushed, v6]);
  }

  /** Resolves once everything handed over so far has been applied to the kernel. */
  async settled(): Promise<void> {
    await this.intake.idle();
    await this.kernel.idle();
  }

  private async applyEvents(events: readonly LeaseEvent[]): Promise<void> {
    const added: string[] = [];
    for (const event of events) {
      const key = event.lease.subnet.toString();
      if (event.type === 'removed') {
        if (this.model.removePeer(key)) this.ctx.log.info({ subnet: key }, 'removing subnet');
        continue;
      }
      const { lease } = event;
      const vtep = leaseVtepMac(lease);
      if ('error' in vtep) {
        this.counters.skippedLeases++;
        this.model.removePeer(key);
        this.ctx.log.warn({ subnet: key, publicIP: lease.attrs.publicIP, reason: vtep.error }, 'ignoring lease');
        continue;
      }
      if (this.ownLease && this.ownLease.subnet.toString() === key) continue;
      const peer: Peer = { subnet: lease.subnet, publicIP: lease.attrs.publicIP, vtepMac: vtep.mac, direct: await this.directRoute(lease.attrs.publicIP) };
      const change = this.model.setPeer(peer);
      if (!change) continue;
      const fields = { subnet: key, publicIP: peer.publicIP, vtepMAC: peer.vtepMac, direct: peer.direct !== null };
      if (events.length <= LOG_EACH_UP_TO || change === 'updated') this.ctx.log.info(fields, change === 'added' ? 'adding subnet' : 'updating subnet');
      else {
        this.ctx.log.debug(fields, 'adding subnet');
        added.push(key);
      }
    }
    if (added.length > 0) this.ctx.log.info({ count: added.length, first: added[0], last: added[added.length - 1] }, 'adding subnets');
  }

  // DirectRouting: a peer on our own L2 segment is reached by plain routing via its PublicIP.
  private async directRoute(publicIP: string): Promise<{ dev: string } | null> {
    if (!this.config.directRouting) return null;
    const ip = parseIp4(publicIP);
    if (this.extSubnets.some((net) => net.contains(ip))) return { dev: this.ctx.extIface.name };
    const lookup = await routeGet(publicIP, this.ipOpts);
    return lookup && lookup.gateway === null ? { dev: lookup.dev } : null;
  }

  /** Joins the flush queued behind the running one, or queues one. */
  private requestFlush(): Promise<void> {
    if (!this.nextFlush) {
      this.nextFlush = this.kernel.run(async () => {
        this.nextFlush = null;
        await this.flush();
      });
    }
    return this.nextFlush;
  }

  private async flush(): Promise<void> {
    try {
      if (!this.snapshotTaken) {
        await this.reconcile('start');
        return;
      }
      const ops = this.model.plan();
      if (ops.length === 0) return;
      this.counters.flushes++;
      await this.apply(ops, 'event');
    } catch (err) {
      this.countError('sync');
      this.ctx.log.error({ err }, 'vxlan backend: kernel update failed; the next resync retries it');
    }
  }

  /**
   * Reads the kernel's tables and makes them match the model: repairs what was changed behind our
   * back, removes what no peer wants (leftovers of an earlier run), retries refused entries.
   * Returns the number of changes made.
   */
  private async reconcile(reason: 'start' | 'resync'): Promise<number> {
    const deviceRepairs = await this.repairDevice();
    // Event deltas first, so that what the snapshot turns up afterwards is a repair.
    if (this.snapshotTaken && this.model.pending > 0) await this.apply(this.model.plan(), 'event');
    const dump = this.nl ? await this.dumpNetlink(this.nl) : await this.dumpKernel();
    // The kernel holds exactly what it held at a pass that found nothing to do, and no peer
    // changed since: it still matches, and the parse and compare can be skipped.
    if (this.clean && this.clean.digest === dump.digest && this.clean.version === this.model.version && this.model.pending === 0) {
      this.counters.unchangedPasses++;
      return deviceRepairs;
    }
    const snapshot = 'tables' in dump ? dump.tables : await this.parseKernel(dump.dumps);
    if (!snapshot) throw new Error('rtnetlink dump without tables'); // digest changed, so they are there
    const extra = this.model.resetFromKernel(snapshot);
    this.snapshotTaken = true;
    const ops = [...extra, ...this.model.plan()];
    this.clean = ops.length === 0 && deviceRepairs === 0 ? { digest: dump.digest, version: this.model.version } : null;
    const changed = await this.apply(ops, reason);
    return changed + deviceRepairs;
  }

  /** The three text dumps, and a digest of them that tells an unchanged kernel from a changed one. */
  private async dumpKernel(): Promise<{ digest: string; dumps: [Buffer, Buffer, Buffer] }> {
    const dumps = await Promise.all([
      toolBytes('ip', routesWithinArgs(this.ctx.network.network.toString()), this.ipOpts),
      toolBytes('ip', neighboursArgs(this.device), this.ipOpts),
      toolBytes('bridge', fdbArgs(this.device), this.ipOpts),
    ]);
    const hash = createHash('sha1');
    for (const d of dumps) hash.update(d).update('\0');
    return { digest: hash.digest('hex'), dumps };
  }

  private async dumpNetlink(nl: RtNetlink): Promise<{ digest: string; tables: KernelSnapshot | undefined }> {
    // Only a digest that would let the pass be skipped may spare the tables.
    const skippable = this.clean && this.clean.version === this.model.version && this.model.pending === 0 ? this.clean.digest : '';
    const dump = await nl.dump(this.devIndex, skippable, (i) => this.devName(i));
    return { digest: dump.digest, tables: dump.tables };
  }

  private devName(ifindex: number): string {
    return ifindex === this.devIndex ? this.device : ifindex === this.extIndex ? this.ctx.extIface.name : `if${ifindex}`;
  }

  private async parseKernel([routes, neighs, fdb]: [Buffer, Buffer, Buffer]): Promise<KernelSnapshot> {
    return {
      routes: await parseLines(routes.toString(), parseRouteLine),
      neighs: await parseLines(neighs.toString(), parseNeighLine),
      fdb: await parseLines(fdb.toString(), parseFdbLine),
    };
  }

  /**
   * Runs the ops — FDB lines in one `bridge -force -batch`, then route and neighbour lines in one
   * `ip -force -batch` — and records each line's outcome. Returns how many the kernel accepted.
   */
  private async apply(ops: readonly KernelOp[], reason: 'event' | 'start' | 'resync'): Promise<number> {
    if (ops.length === 0) return 0;
    const started = performance.now();
    const fdb: KernelOp[] = [];
    const rest: KernelOp[] = [];
    for (const o of ops) {
      if (!o.words) this.failed(o, o.invalid ?? 'invalid entry');
      else (o.kind === 'fdb' ? fdb : rest).push(o);
    }
    let accepted = 0;
    const groups: [('bridge' | 'ip' | 'netlink'), KernelOp[]][] = this.nl ? [['netlink', [...fdb, ...rest]]] : [['bridge', fdb], ['ip', rest]];
    for (const [tool, group] of groups) {
      if (group.length === 0) continue;
      let outcome: BatchOutcome;
      try {
        outcome = tool === 'netlink' ? await this.applyNetlink(this.nl!, group) : await forceBatch(tool, group.map((o) => o.words!), this.ipOpts);
      } catch (err) {
        outcome = { failed: new Map(), unknownFrom: 0 };
        this.ctx.log.error({ err, tool }, 'vxlan backend: cannot run the batch');
      }
      group.forEach((o, i) => {
        const refused = outcome.failed.get(i) ?? (outcome.unknownFrom >= 0 && i >= outcome.unknownFrom ? 'not applied: the batch stopped early' : null);
        if (refused !== null) return this.failed(o, refused);
        this.model.applied(o);
        this.failures.delete(`${o.kind} ${o.key}`);
        kernelMetrics.changes.inc({ kind: o.kind });
        accepted++;
      });
    }
    kernelMetrics.applySeconds.observe({ reason }, (performance.now() - started) / 1000);
    kernelMetrics.peers.set({ backend: 'vxlan' }, this.model.programmed.routes.size);
    this.ctx.log.debug({ reason, ops: ops.length, accepted, ms: Math.round(performance.now() - started) }, 'applied vxlan table changes');
    return accepted;
  }

  /** The same ops as netlink messages, in the same order; an op naming an unknown device is refused here. */
  private async applyNetlink(nl: RtNetlink, ops: readonly KernelOp[]): Promise<BatchOutcome> {
    const failed = new Map<number, string>();
    const sent: number[] = [];
    const messages: NetlinkOp[] = [];
    ops.forEach((o, i) => {
      const m = this.netlinkOp(o);
      if (typeof m === 'string') failed.set(i, m);
      else {
        sent.push(i);
        messages.push(m);
      }
    });
    for (const [k, message] of await nl.apply(messages)) failed.set(sent[k]!, message);
    return { failed, unknownFrom: -1 };
  }

  private netlinkOp(o: KernelOp): NetlinkOp | string {
    const del = o.action === 'delete';
    if (o.kind === 'fdb') return { kind: 'fdb', del, ifindex: this.devIndex, ip: parseIp4(o.value), prefixLen: 0, gateway: 0, onlink: false, mac: o.key };
    if (o.kind === 'neigh') return { kind: 'neigh', del, ifindex: this.devIndex, ip: parseIp4(o.key), prefixLen: 0, gateway: 0, onlink: false, mac: del ? null : o.value };
    const [via, dev] = o.value.split('|') as [string, string];
    const ifindex = dev === this.device ? this.devIndex : dev === this.ctx.extIface.name ? this.extIndex : 0;
    if (!ifindex) return `unknown device ${dev}`;
    const dst = Ip4Net.parse(o.key);
    return { kind: 'route', del, ifindex, ip: dst.ip, prefixLen: dst.prefixLen, gateway: via ? parseIp4(via) : 0, onlink: dev === this.device, mac: null };
  }

  private failed(o: KernelOp, error: string): void {
    this.countError(o.kind);
    const id = `${o.kind} ${o.key}`;
    const fields = { kind: o.kind, action: o.action, subnet: o.subnet, entry: o.words?.join(' ') ?? o.key, error };
    if (this.failures.get(id) === error) {
      this.ctx.log.debug(fields, 'kernel refused an entry again; retrying at the next resync');
      return;
    }
    this.failures.set(id, error);
    this.ctx.log.warn(fields, 'kernel refused an entry; every other entry is applied, this one is retried at the next resync');
  }

  private countError(kind: string): void {
    this.counters.errors++;
    kernelMetrics.errors.inc({ kind });
  }

  /** One reconcile pass now, queued behind the kernel work in flight; resolves with the changes it made. */
  resync(): Promise<number> {
    return this.kernel.run(async () => {
      this.counters.resyncs++;
      try {
        const repaired = await this.reconcile('resync');
        if (repaired > 0) {
          this.counters.repairs += repaired;
          kernelMetrics.repairs.inc(repaired);
          this.ctx.log.info({ changes: repaired }, 'resync repaired vxlan kernel state');
        }
        return repaired;
      } catch (err) {
        this.countError('sync');
        this.ctx.log.error({ err }, 'vxlan backend: resync failed; retrying at the next one');
        return 0;
      }
    });
  }

  private startResync(): void {
    const interval = this.options.resyncIntervalMs ?? 5000;
    if (interval <= 0 || this.timer) return;
    this.timer = setInterval(() => {
      void this.resync();
      void this.v6?.sync('resync');
    }, interval);
    this.timer.unref();
  }

  stats(): Record<string, number> {
    return {
      peers: this.model.size,
      directPeers: this.model.directCount,
      programmedRoutes: this.model.programmed.routes.size,
      netlink: this.nl ? 1 : 0,
      ...this.counters,
      ...(this.v6?.stats() ?? {}),
    };
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.intake.idle();
    await this.kernel.idle();
    await this.v6?.close();
    this.nl?.close();
    this.nl = null;
  }
}
