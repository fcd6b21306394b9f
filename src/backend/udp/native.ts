// Typed wrapper over the native data path (src/native/, built by `npm install` into
// build/Release/flannel_native.node). The addon runs its own threads; JS only configures it.
import { addonPath, loadBuiltAddon } from '../../common/addon.js';
import type { Ip4, Ip4Net } from '../../common/ip4.js';

export interface UdpForwarderOptions {
  /** TUN device to create; it must not exist yet. */
  tunName: string;
  mtu: number;
  /** Local address the UDP socket binds to (0 = any). */
  bindAddress: Ip4;
  port: number;
  /** Forwarding threads, each with its own TUN queue and UDP socket; default 1. */
  workers?: number;
  /** Create the devices inside this named network namespace (or /path/to/netns); default: ours. */
  netns?: string;
  socketBufferBytes?: number;
  // Data-path optimisations, all on by default; switching all off gives upstream's behaviour.
  batch?: boolean;
  tunOffload?: boolean;
  udpGso?: boolean;
  udpGro?: boolean;
  tunCoalesce?: boolean;
  /**
   * The AllowedIPs check on received datagrams (the inner source must lie in a subnet of the member
   * that sent it); default on. Off only in the throughput bench, to measure what the check costs:
   * UdpBackend never turns it off.
   */
  innerSourceCheck?: boolean;
}

export interface ForwarderRoute {
  subnet: Ip4Net;
  /** The lease's PublicIP. */
  peer: Ip4;
  port: number;
}

export interface ForwarderTable {
  /** This node's subnet: the only inner destination accepted from peers; null = none yet. */
  own: Ip4Net | null;
  /**
   * Source address of our ICMP net-unreachable errors; null = send none. Not an address of this
   * node: the kernel drops packets arriving with a local source address as martians.
   */
  icmpSource: Ip4 | null;
  routes: readonly ForwarderRoute[];
}

/**
 * Data-path counters by name (packets, bytes, drops by reason...). The names are defined once, in
 * src/native/counters.h; the addon reports every one of them, so none can be missing here.
 */
export type ForwarderStats = Record<string, number>;

/** What the kernel actually granted. */
export interface ForwarderFeatures {
  workers: number;
  multiQueue: boolean;
  vnetHdr: boolean;
  tso: boolean;
  udpGso: boolean;
  udpGro: boolean;
  tunCoalesce: boolean;
  sndBuf: number;
  rcvBuf: number;
}

interface NativeTable {
  own: { ip: number; prefixLen: number } | null;
  icmpSource: number;
  routes: { ip: number; prefixLen: number; peerIp: number; peerPort: number }[];
}

interface NativeForwarder {
  setTable(table: NativeTable): void;
  stats(): Record<string, number>;
  features(): ForwarderFeatures;
  failure(): string | null;
  close(): void;
}

interface NativeAddon {
  version: string;
  /** Every counter's name, from counters.h. */
  counterNames: string[];
  UdpForwarder: new (options: Omit<UdpForwarderOptions, 'netns'> & { netnsPath?: string }) => NativeForwarder;
}

let addon: NativeAddon | null = null;

/** Loads the data-path addon; throws where it was not built (the udp backend cannot run without it). */
export function loadAddon(): NativeAddon {
  addon ??= loadBuiltAddon<NativeAddon>('flannel_native');
  if (!addon) throw new Error(`native addon not built (no ${addonPath('flannel_native')}): run \`npm install\``);
  return addon;
}

export class UdpForwarder {
  private readonly native: NativeForwarder;
  private closed = false;

  /** Creates the TUN device and UDP socket(s) and starts forwarding. Throws on failure. */
  constructor(options: UdpForwarderOptions) {
    const { netns, ...rest } = options;
    const nativeOptions = netns === undefined ? rest : { ...rest, netnsPath: netns.includes('/') ? netns : `/run/netns/${netns}` };
    this.native = new (loadAddon().UdpForwarder)(nativeOptions);
  }

  /** Replaces the whole forwarding table; the workers switch over at their next batch. */
  setTable(table: ForwarderTable): void {
    this.native.setTable({
      own: table.own ? { ip: table.own.ip, prefixLen: table.own.prefixLen } : null,
      icmpSource: table.icmpSource ?? 0,
      routes: table.routes.map((r) => ({ ip: r.subnet.ip, prefixLen: r.subnet.prefixLen, peerIp: r.peer, peerPort: r.port })),
    });
  }

  stats(): ForwarderStats {
    return this.native.stats();
  }

  features(): ForwarderFeatures {
    return this.native.features();
  }

  /** Null while the data path works; why it stopped once the TUN failed (e.g. flannel0 was deleted). */
  failure(): string | null {
    return this.closed ? null : this.native.failure();
  }

  /** Stops and joins the threads and closes the TUN (which removes it) and the sockets. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.native.close();
  }
}

/** The names of every data-path counter, as the addon defines them. */
export function forwarderCounterNames(): readonly string[] {
  return loadAddon().counterNames;
}
