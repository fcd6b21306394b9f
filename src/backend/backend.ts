// The one interface between the lease manager and the data planes. Backends see leases, never etcd:
// the manager owns etcd, claims our subnet, and hands every remote lease change over as events.
import type { Logger } from '../common/log.js';
import type { BackendConfig, NetworkConfig } from '../subnet/config.js';
import type { Lease, LeaseBackend, LeaseEvent } from '../subnet/lease.js';

/** The underlay interface that carries encapsulated traffic. */
export interface ExternalInterface {
  /** Device name, e.g. eth0. */
  name: string;
  /** The interface's own IPv4 address (tunnel source). */
  ifaceIP: string;
  /** The address other nodes send to; differs from ifaceIP behind NAT (--public-ip). */
  publicIP: string;
  mtu: number;
  /** Dual stack: the interface's own global IPv6 address, and the one other nodes send to (--public-ipv6). */
  ifaceIPv6?: string | null;
  publicIPv6?: string | null;
}

export interface BackendContext {
  extIface: ExternalInterface;
  network: NetworkConfig;
  log: Logger;
}

/** What a backend publishes in our lease, and the MTU pods on this node must use. */
export interface BackendAnnouncement {
  /** The backend's part of our lease (vxlan: the VTEP of each device). */
  backend: LeaseBackend;
  mtu: number;
}

/** One WireGuard device as /metrics shows it. */
export interface WireguardDeviceStats {
  device: string;
  peers: number;
  /** Peers without a completed handshake in the last 3 minutes (or ever). */
  staleHandshakes: number;
  /** Summed over the device's peers. */
  rxBytes: number;
  txBytes: number;
}

/** What a backend reads from its data path when /metrics is scraped. */
export interface BackendScrape {
  wireguard?: WireguardDeviceStats[];
}

export interface Backend {
  readonly config: BackendConfig;
  /** Creates or repairs this node's device(s) before a lease is claimed. */
  prepare(): Promise<BackendAnnouncement>;
  /** Our subnet is known (at start, or after it changed): address the device for it. */
  setOwnLease(lease: Lease): Promise<void>;
  /**
   * Remote leases came or went (our own lease is never included). The first call after start
   * carries every lease that exists; a backend then removes kernel state for any lease not among
   * them (it vanished while we were down). Must be idempotent.
   */
  handleLeaseEvents(events: readonly LeaseEvent[]): Promise<void>;
  /**
   * Resolves once every event handed over so far is in the kernel (or refused and logged). A backend
   * may resolve handleLeaseEvents earlier — once the events are in its model — so that a burst of
   * watch responses is coalesced into a few kernel batches; optional.
   */
  settled?(): Promise<void>;
  /** Data-path counters (packets, bytes, drops by reason) for /metrics and flannelctl; optional. */
  stats?(): Record<string, number>;
  /** Data-path figures that must be read from outside the daemon (a process, a device) at scrape time: cheap and bounded; optional. */
  scrape?(): Promise<BackendScrape>;
  /** Stops threads and timers. Kernel state is left in place so traffic keeps flowing across a restart. */
  close(): Promise<void>;
}
