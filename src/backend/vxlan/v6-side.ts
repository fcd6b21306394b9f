// The IPv6 half of a dual-stack vxlan node, as upstream v0.20.2 programs it: a second device
// flannel-v6.<VNI> (VXLAN over the underlay's IPv6 address, MTU underlay − 70), addressed with our IPv6
// subnet's network address as a /128, and per peer a route to its IPv6 subnet via that subnet's network
// address (onlink), a permanent neighbour entry for that address with the peer's BackendV6Data.VtepMAC,
// and a permanent FDB entry sending that MAC to the peer's PublicIPv6. Kept apart from the IPv4 side
// (vxlan-backend.ts), which calls it at four points. Diffs are Map lookups; one `ip -force -batch` and
// one `bridge -force -batch` per sync; syncs requested while one runs share one more.
import { CoalescedPass } from '../../common/coalesced-pass.js';
import type { Logger } from '../../common/log.js';
import { kernelMetrics } from '../../common/metrics.js';
import { fdbDeleteCommand, fdbReplaceCommand, listFdb } from '../../routes/fdb.js';
import { IpCommandError, bridgeBatch, ip, ipBatch, ipJson, type IpOptions } from '../../routes/ip.js';
import { linkDeleteCommand, linkSetCommand, vxlanAddCommand, type VxlanSpec } from '../../routes/link.js';
import { neighDeleteCommand, neighReplaceCommand } from '../../routes/neigh.js';
import type { VxlanBackendConfig } from '../../subnet/config.js';
import { Ip6Net, formatIp6 } from '../../common/ip6.js';
import type { Lease, LeaseEvent, VxlanVtep } from '../../subnet/lease.js';
import type { BackendContext } from '../backend.js';
import { failedBatchLines, listDevRoutes } from '../hostgw/routes.js';

/** Outer IPv6 (40) + UDP (8) + VXLAN (8) + inner Ethernet (14). */
export const VXLAN6_OVERHEAD = 70;

interface PeerV6 {
  subnet: Ip6Net;
  /** The subnet's network address: the next hop, resolved by the permanent neighbour entry. */
  gateway: string;
  mac: string;
  publicIPv6: string;
}

interface RawLink {
  address?: string;
  mtu: number;
  flags?: string[];
  linkinfo?: { info_kind?: string; info_data?: Record<string, unknown> };
}

/** The BackendV6Data.VtepMAC and PublicIPv6 of a dual-stack vxlan lease, or why it has no IPv6 side. */
export function leaseV6Peer(lease: Lease): PeerV6 | { error: string } {
  const subnet = lease.ipv6Subnet ?? null;
  if (!subnet) return { error: 'no IPv6 subnet in its key' };
  const publicIPv6 = lease.attrs.publicIPv6;
  if (!publicIPv6) return { error: 'no PublicIPv6' };
  const { backend } = lease.attrs;
  if (backend.type !== 'vxlan' || !backend.vtepV6) return { error: 'no BackendV6Data.VtepMAC' };
  return { subnet, gateway: formatIp6(subnet.ip), mac: backend.vtepV6.mac, publicIPv6 };
}

export class VxlanV6Side {
  readonly device: string;
  private readonly ipOpts: IpOptions;
  private readonly peers = new Map<string, PeerV6>();
  private mac: string | null = null;
  private own: Ip6Net | null = null;
  /** Kernel passes: requests made while one runs share one more pass after it. */
  private readonly passes = new CoalescedPass<'event' | 'resync'>(
    (reason) => this.syncOnce(reason),
    (err) => {
      this.counters.v6Errors++;
      this.log.error({ err: (err as Error).message }, 'vxlan IPv6: kernel update failed');
    },
  );
  private readonly counters = { v6Syncs: 0, v6Errors: 0, v6SkippedLeases: 0, v6RefusedEntries: 0 };

  constructor(
    private readonly ctx: BackendContext,
    private readonly config: VxlanBackendConfig,
    ipOpts: IpOptions,
  ) {
    this.device = `flannel-v6.${config.vni}`;
    this.ipOpts = ipOpts;
  }

  private get log(): Logger {
    return this.ctx.log;
  }

  private spec(): VxlanSpec {
    const { extIface } = this.ctx;
    if (!extIface.ifaceIPv6) throw new Error(`vxlan: EnableIPv6 is set but ${extIface.name} has no global IPv6 address`);
    return {
      name: this.device,
      vni: this.config.vni,
      local: extIface.ifaceIPv6,
      dev: extIface.name,
      port: this.config.port,
      learning: false,
      gbp: this.config.gbp,
      mtu: this.config.mtu ?? extIface.mtu - VXLAN6_OVERHEAD,
      ...(this.mac ? { address: this.mac } : {}),
    };
  }

  private async readDevice(): Promise<RawLink | null> {
    try {
      const [raw] = await ipJson<RawLink>(['-d', 'link', 'show', 'dev', this.device], this.ipOpts);
      return raw ?? null;
    } catch (err) {
      if (err instanceof IpCommandError && /does not exist|Cannot find device/.test(err.stderr)) return null;
      throw err;
    }
  }

  /** Creates flannel-v6.<VNI>, or keeps it (and its MAC, which peers have) when its attributes match. */
  async prepare(): Promise<VxlanVtep> {
    const spec = this.spec();
    let link = await this.readDevice();
    const d = link?.linkinfo?.info_data ?? {};
    // iproute2 prints an IPv6 tunnel source as "local6".
    const matches = link?.linkinfo?.info_kind === 'vxlan' && d['id'] === spec.vni && d['local6'] === spec.local && d['link'] === spec.dev &&
      d['port'] === spec.port && d['learning'] === false && (d['gbp'] === true) === spec.gbp;
    if (link && !matches) {
      this.log.warn({ device: this.device }, 'IPv6 vxlan device exists with other attributes; recreating it');
      await ip(linkDeleteCommand(this.device), this.ipOpts);
      link = null;
    }
    if (!link) {
      await ip(vxlanAddCommand(spec), this.ipOpts);
      this.log.info({ device: this.device, vni: spec.vni, local: spec.local, dev: spec.dev, port: spec.port }, 'created IPv6 vxlan device');
    } else if (spec.mtu !== undefined && link.mtu !== spec.mtu) {
      await ip(linkSetCommand(this.device, { mtu: spec.mtu }), this.ipOpts);
    }
    const made = await this.readDevice();
    if (!made?.address) throw new Error(`vxlan device ${this.device} is missing right after it was created`);
    this.mac = made.address.toLowerCase();
    return { vni: this.config.vni, mac: this.mac };
  }

  /** Addresses the device with our IPv6 subnet's network address as /128 (and drops any other). */
  async setOwnLease(lease: Lease): Promise<void> {
    const subnet = lease.ipv6Subnet ?? null;
    if (!subnet) return;
    this.own = subnet;
    this.peers.delete(subnet.toString());
    await this.addressDevice();
  }

  private async addressDevice(): Promise<number> {
    if (!this.own) return 0;
    const want = `${formatIp6(this.own.ip)}/128`;
    const [link] = await ipJson<{ flags?: string[]; addr_info?: { local: string; prefixlen: number; scope?: string }[] }>(
      ['-6', 'addr', 'show', 'dev', this.device], this.ipOpts,
    );
    const have = (link?.addr_info ?? []).filter((a) => a.scope === 'global').map((a) => `${a.local}/${a.prefixlen}`);
    const up = link?.flags?.includes('UP') ?? false;
    if (up && have.length === 1 && have[0] === want) return 0;
    await ipBatch([
      ...have.filter((a) => a !== want).map((a) => ['addr', 'del', a, 'dev', this.device]),
      ['addr', 'replace', want, 'dev', this.device, 'nodad'],
      linkSetCommand(this.device, { up: true }),
    ], this.ipOpts);
    return 1;
  }

  async handleLeaseEvents(events: readonly LeaseEvent[]): Promise<void> {
    for (const { type, lease } of events) {
      const key = lease.subnet.toString();
      if (type === 'removed') {
        this.peers.delete(key);
        continue;
      }
      const peer = leaseV6Peer(lease);
      if ('error' in peer) {
        if (this.peers.delete(key) || lease.ipv6Subnet) {
          this.counters.v6SkippedLeases++;
          this.log.warn({ subnet: key, reason: peer.error }, 'lease has no usable IPv6 vxlan side: its IPv6 subnet is not routed');
        }
        continue;
      }
      if (this.own?.equals(peer.subnet)) continue;
      this.peers.set(key, peer);
    }
    await this.sync('event');
  }

  /** Makes the kernel match; concurrent calls share one more pass after the running one. */
  sync(reason: 'event' | 'resync'): Promise<void> {
    return this.passes.request(reason);
  }

  private async syncOnce(reason: 'event' | 'resync'): Promise<void> {
    this.counters.v6Syncs++;
    if (!(await this.readDevice())) {
      this.log.warn({ device: this.device }, 'IPv6 vxlan device disappeared; recreating it');
      await this.prepare();
    }
    await this.addressDevice();
    const [routes, neighs, fdb] = await Promise.all([
      listDevRoutes(6, this.device, this.ipOpts),
      ipJson<{ dst: string; lladdr?: string; state?: string[] }>(['-6', 'neigh', 'show', 'dev', this.device, 'nud', 'all'], this.ipOpts),
      listFdb(this.device, this.ipOpts),
    ]);
    const wantRoute = new Map<string, string>();
    const wantNeigh = new Map<string, string>();
    const wantFdb = new Map<string, string>();
    for (const p of this.peers.values()) {
      wantRoute.set(p.subnet.toString(), p.gateway);
      wantNeigh.set(p.gateway, p.mac);
      wantFdb.set(p.mac, p.publicIPv6);
    }
    const haveRoute = new Map(routes.map((r) => [r.dst, r.gateway]));
    const haveNeigh = new Map(neighs.filter((n) => n.state?.includes('PERMANENT')).map((n) => [n.dst, n.lladdr?.toLowerCase() ?? null]));
    const haveFdb = new Map(fdb.filter((e) => e.permanent).map((e) => [e.mac, e.dst]));

    const fdbCmds: string[][] = [];
    for (const e of fdb) if (wantFdb.get(e.mac) !== e.dst) fdbCmds.push(fdbDeleteCommand(this.device, e.mac, e.dst));
    for (const [mac, dst] of wantFdb) if (haveFdb.get(mac) !== dst) fdbCmds.push(fdbReplaceCommand(this.device, mac, dst));
    const ipCmds: string[][] = [];
    for (const r of routes) if (r.gateway !== null && r.protocol !== 'kernel' && !wantRoute.has(r.dst)) ipCmds.push(['route', 'del', r.dst, 'via', r.gateway, 'dev', this.device]);
    for (const [addr] of haveNeigh) if (!wantNeigh.has(addr)) ipCmds.push(neighDeleteCommand(this.device, addr));
    for (const [addr, mac] of wantNeigh) if (haveNeigh.get(addr) !== mac) ipCmds.push(neighReplaceCommand(this.device, addr, mac));
    // Routes last on the way in: a route must never point at a next hop with no neighbour entry yet.
    for (const [dst, via] of wantRoute) if (haveRoute.get(dst) !== via) ipCmds.push(['route', 'replace', dst, 'via', via, 'dev', this.device, 'onlink']);
    if (fdbCmds.length + ipCmds.length === 0) return;
    this.log.debug({ reason, fdb: fdbCmds, ip: ipCmds }, 'applying vxlan IPv6 table changes');
    let refused = 0;
    for (const [run, cmds] of [[bridgeBatch, fdbCmds], [ipBatch, ipCmds]] as const) {
      try {
        await run(cmds, { ...this.ipOpts, force: true });
      } catch (err) {
        if (!(err instanceof IpCommandError)) throw err;
        refused += Math.max(1, failedBatchLines(err.stderr));
      }
    }
    kernelMetrics.changes.inc({ kind: 'ipv6' }, fdbCmds.length + ipCmds.length - refused);
    if (refused > 0) {
      this.counters.v6RefusedEntries += refused;
      kernelMetrics.errors.inc({ kind: 'ipv6' }, refused);
      this.log.warn({ refused }, 'vxlan IPv6: the kernel refused some entries; the others are in place, and the next resync retries');
    }
  }

  stats(): Record<string, number> {
    return { v6Peers: this.peers.size, ...this.counters };
  }

  async close(): Promise<void> {
    await this.passes.idle();
  }
}
