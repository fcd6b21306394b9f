// One vxlan device, for either family: flannel.<VNI> over the underlay's IPv4 address, or
// flannel-v6.<VNI> over its IPv6 address — the same code for both. It is created with upstream
// flannel's attributes and a MAC of our choosing (set at creation, so systemd's MACAddressPolicy
// leaves it alone), kept with its MAC when one with matching attributes exists (peers have that MAC
// in their FDB), and deleted and recreated when it does not match or has vanished. Its address is
// our subnet's network address alone (/32 or /128), and its MTU the configured one. repair() checks
// all of that again; a MAC changed behind our back is set back to the one we published.
import { randomBytes } from 'node:crypto';
import type { Logger } from '../../common/log.js';
import type { VxlanBackendConfig } from '../../subnet/config.js';
import { addrDeleteCommand, addrReplaceCommand } from '../../routes/addr.js';
import { type Family, type IpNet, formatIp } from '../../routes/entries.js';
import { ip, ipBatch, type IpOptions } from '../../routes/ip.js';
import { type LinkInfo, type VxlanSpec, linkDeleteCommand, linkSetCommand, readLink, readLinkState, vxlanAddCommand, vxlanMismatches } from '../../routes/link.js';
import type { ExternalInterface } from '../backend.js';

/**
 * Encapsulation per packet, inner Ethernet (14) + VXLAN (8) + UDP (8) + outer IP header: IPv4 (20)
 * gives 50, which is what upstream subtracts from `Backend.MTU` (or the underlay's MTU); IPv6 (40)
 * gives 70, which a full-size frame on flannel-v6 needs.
 */
export const VXLAN_OVERHEAD: Record<Family, number> = { 4: 50, 6: 70 };
/** The kernel's limit on device names (IFNAMSIZ - 1). */
const MAX_NAME = 15;

export function vxlanDeviceName(family: Family, vni: number): string {
  return family === 4 ? `flannel.${vni}` : `flannel-v6.${vni}`;
}

/** A random unicast, locally administered MAC, as upstream makes for its devices. */
function randomMac(): string {
  const b = randomBytes(6);
  b[0] = (b[0]! & 0xfe) | 0x02;
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

export class VxlanDevice {
  readonly name: string;
  /** The MAC we publish (VtepMAC); null before ensure(). */
  mac: string | null = null;
  /** Our subnet of this family (the device's address is its network address); null before a lease. */
  private own: IpNet | null = null;
  recreated = 0;

  constructor(
    readonly family: Family,
    private readonly config: VxlanBackendConfig,
    private readonly ext: ExternalInterface,
    private readonly log: Logger,
    private readonly ipOpts: IpOptions,
  ) {
    this.name = vxlanDeviceName(family, config.vni);
    if (this.name.length > MAX_NAME) {
      throw new Error(`vxlan: Backend.VNI ${config.vni} makes the device name ${this.name}, longer than the kernel's ${MAX_NAME} characters`);
    }
  }

  /**
   * The device MTU: `Backend.MTU` (or the underlay's MTU) minus the encapsulation, as upstream
   * defines the key; the IPv6 device subtracts IPv6's longer header.
   */
  get mtu(): number {
    return (this.config.mtu ?? this.ext.mtu) - VXLAN_OVERHEAD[this.family];
  }

  private spec(): VxlanSpec {
    const local = this.family === 4 ? this.ext.ifaceIP : this.ext.ifaceIPv6;
    if (!local) throw new Error(`vxlan: EnableIPv6 is set but ${this.ext.name} has no global IPv6 address`);
    const least = this.family === 4 ? 68 : 1280;
    if (this.mtu < least) {
      throw new Error(`vxlan: ${this.config.mtu === null ? `${this.ext.name}'s MTU` : 'Backend.MTU'} ${this.config.mtu ?? this.ext.mtu} leaves ${this.mtu} for ${this.name}, below IPv${this.family}'s minimum of ${least}`);
    }
    return {
      name: this.name,
      vni: this.config.vni,
      local,
      dev: this.ext.name,
      port: this.config.port,
      learning: false,
      gbp: this.config.gbp,
      mtu: this.mtu,
      // A device recreated under us gets the MAC we published, which keeps peers' FDBs valid.
      ...(this.mac ? { address: this.mac } : {}),
    };
  }

  /** Creates the device, or keeps (with its MAC) one that matches; returns it as the kernel reports it. */
  async ensure(): Promise<LinkInfo> {
    const spec = this.spec();
    let link = await readLink(this.name, this.ipOpts);
    if (link) {
      const reasons = vxlanMismatches(link, spec);
      if (reasons.length > 0) {
        this.log.warn({ device: this.name, reasons }, 'vxlan device exists with incompatible attributes; recreating it');
        await ip(linkDeleteCommand(this.name), this.ipOpts);
        link = null;
      } else {
        this.log.debug({ device: this.name, mac: link.address }, 'reusing existing vxlan device');
        if (link.mtu !== spec.mtu) await ip(linkSetCommand(this.name, { mtu: spec.mtu! }), this.ipOpts);
      }
    }
    if (!link) {
      await ip(vxlanAddCommand({ ...spec, address: spec.address ?? randomMac() }), this.ipOpts);
      this.log.info({ device: this.name, vni: spec.vni, local: spec.local, dev: spec.dev, port: spec.port, gbp: spec.gbp, mtu: spec.mtu }, 'created vxlan device');
    }
    const made = await readLink(this.name, this.ipOpts);
    if (!made?.vxlan) throw new Error(`vxlan device ${this.name} is missing right after it was created`);
    this.mac ??= made.address;
    return made;
  }

  /** Our subnet of this family changed (at start, or after a move): address the device for it. */
  async setSubnet(subnet: IpNet | null): Promise<void> {
    this.own = subnet;
    await this.address();
  }

  /**
   * The subnet's network address as /32 (/128): a source address for host-to-pod traffic that makes
   * no broadcast or prefix routes. Any other address of the family (an old lease's) is removed — after
   * the new one is on, since a device left without any address loses every route through it. Sets
   * the device up, and sets back our MAC if something changed it.
   */
  private async address(): Promise<void> {
    if (!this.own) return;
    const want = `${formatIp(this.own.ip)}/${this.family === 4 ? 32 : 128}`;
    const state = await readLinkState(this.name, this.ipOpts);
    const stale = (state?.addrs ?? []).filter((a) => a.family === this.family && a.scope === 'global' && a.cidr !== want);
    const macChanged = this.macChanged(state?.mac);
    await ipBatch([
      ...(macChanged ? [linkSetCommand(this.name, { address: this.mac! })] : []),
      addrReplaceCommand(this.name, want),
      ...stale.map((a) => addrDeleteCommand(this.name, a.cidr)),
      linkSetCommand(this.name, { up: true }),
    ], this.ipOpts);
  }

  /** Whether the device's MAC is no longer the one we published (logged: e.g. systemd's MACAddressPolicy changed it). */
  private macChanged(now: string | undefined): boolean {
    if (!this.mac || now === undefined || now === this.mac) return false;
    this.log.warn({ device: this.name, published: this.mac, found: now }, 'vxlan device MAC was changed; setting back the one peers know');
    return true;
  }

  /**
   * Someone deleted the device (or its underlay, which takes it along), set it down, changed its
   * address or its MAC: put it right. Returns the number of repairs made.
   */
  async repair(): Promise<number> {
    if (!this.mac) return 0; // not prepared
    // One `ip addr show` tells whether the device exists and is up, its MAC and its addresses.
    const state = await readLinkState(this.name, this.ipOpts);
    if (!state) {
      this.log.warn({ device: this.name }, 'vxlan device disappeared; recreating it');
      this.recreated++;
      await this.ensure();
      await this.address();
      return 1;
    }
    let repairs = 0;
    if (this.macChanged(state.mac)) {
      await ip(linkSetCommand(this.name, { address: this.mac }), this.ipOpts);
      repairs++;
    }
    if (!this.own) return repairs;
    const want = `${formatIp(this.own.ip)}/${this.family === 4 ? 32 : 128}`;
    const global = state.addrs.filter((a) => a.family === this.family && a.scope === 'global');
    if (state.up && global.length === 1 && global[0]!.cidr === want) return repairs;
    this.log.warn({ device: this.name }, 'vxlan device is down or wrongly addressed; restoring it');
    await this.address();
    return repairs + 1;
  }
}
