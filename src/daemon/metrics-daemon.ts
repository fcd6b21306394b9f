// Metrics read from the running daemon when /metrics is scraped: readiness, this node's lease, build
// info, the udp data path's counters (kept by the native forwarder, so read at scrape time rather than
// mirrored on every packet), the wireguard devices' peers, handshakes and bytes (kept by WireGuard,
// read from `wg show dump` at scrape time, bounded by the backend), and prom-client's standard
// process_* and nodejs_* metrics. The metrics
// components update as events happen live in src/common/metrics.ts; all of them share one registry.
import { Counter, Gauge, collectDefaultMetrics } from 'prom-client';
import type { BackendScrape, WireguardDeviceStats } from '../backend/backend.js';
import { metricsRegistry } from '../common/metrics.js';
import { VERSION } from '../common/version.js';

/** This node's lease, as /metrics shows it. */
export interface LeaseInfo {
  subnet: string;
  network: string;
  backend: string;
  publicIP: string;
  /** When the etcd lease runs out; null for a reservation. */
  expiration: Date | null;
}

/** What the daemon hands the health server; each is called at scrape time. */
export interface ScrapeSource {
  ready(): boolean;
  lease?(): LeaseInfo | null;
  /** The backend's data-path counters (the udp forwarder's stats()); {} when it has none. */
  backendStats?(): Record<string, number>;
  /** What the backend reads at scrape time (the wireguard devices); {} when it reads nothing. */
  backendScrape?(): Promise<BackendScrape>;
}

let source: ScrapeSource | null = null;
const registers = [metricsRegistry];

// The udp forwarder's counter names (src/backend/udp/native.ts) → metric and label.
const UDP_DIRECTION = { txPackets: 'tx', rxPackets: 'rx' } as const;
const UDP_DIRECTION_BYTES = { txBytes: 'tx', rxBytes: 'rx' } as const;
const UDP_DROPS: Readonly<Record<string, string>> = {
  dropNoRoute: 'no_route',
  dropTtlExpired: 'ttl_expired',
  dropTunInvalid: 'tun_invalid',
  dropMalformedShort: 'malformed_short',
  dropMalformedVersion: 'malformed_version',
  dropMalformedHeader: 'malformed_header',
  dropMalformedLength: 'malformed_length',
  dropMalformedChecksum: 'malformed_checksum',
  dropUnknownSource: 'unknown_source',
  dropSpoofedSource: 'spoofed_source',
  dropNotLocal: 'not_local',
  rxTcpChecksumBad: 'bad_tcp_checksum',
};
const UDP_ERRORS: Readonly<Record<string, string>> = { txErrors: 'udp_send', tunWriteErrors: 'tun_write' };
const UDP_CALLS: Readonly<Record<string, string>> = {
  tunReads: 'tun_read',
  tunGsoReads: 'tun_read_gso',
  tunWrites: 'tun_write',
  tunGsoWrites: 'tun_write_gso',
  udpSendCalls: 'udp_send',
  udpGsoSends: 'udp_send_gso',
  udpRecvCalls: 'udp_recv',
  udpGroRecvs: 'udp_recv_gro',
};

/** A counter whose values are copied from the backend's stats at each scrape. */
function udpCounter(name: string, help: string, label: string, map: Readonly<Record<string, string>>): Counter<string> {
  return new Counter({
    name,
    help,
    labelNames: [label],
    registers,
    collect(this: Counter<string>) {
      this.reset();
      const stats = source?.backendStats?.() ?? {};
      for (const [key, value] of Object.entries(map)) {
        const n = stats[key];
        if (typeof n === 'number' && Number.isFinite(n) && n >= 0) this.inc({ [label]: value }, n);
      }
    },
  });
}

/** One unlabelled metric whose value is one of the backend's stats, read at each scrape. */
function udpScalar(kind: 'counter' | 'gauge', name: string, help: string, stat: string): void {
  const read = (): number | undefined => {
    const n = source?.backendStats?.()[stat];
    return typeof n === 'number' ? n : undefined;
  };
  if (kind === 'counter') {
    new Counter({
      name, help, registers,
      collect(this: Counter<string>) {
        this.reset();
        const n = read();
        if (n !== undefined && n >= 0) this.inc(n);
      },
    });
  } else {
    new Gauge({
      name, help, registers,
      collect(this: Gauge<string>) {
        this.reset();
        const n = read();
        if (n !== undefined) this.set(n);
      },
    });
  }
}

/**
 * The series each udp forwarder counter appears as on /metrics (e.g. dropNoRoute →
 * flannel_udp_dropped_packets_total{reason="no_route"}), for readers that want the counters back.
 */
export function udpStatSeries(): Record<string, string> {
  const out: Record<string, string> = {
    icmpUnreachableSent: 'flannel_udp_icmp_unreachable_sent_total',
    rxMaxDatagram: 'flannel_udp_rx_max_datagram_bytes',
    leases: 'flannel_udp_routes',
    tableSwaps: 'flannel_udp_table_swaps_total',
  };
  const add = (metric: string, label: string, map: Readonly<Record<string, string>>) => {
    for (const [stat, value] of Object.entries(map)) out[stat] = `${metric}{${label}="${value}"}`;
  };
  add('flannel_udp_packets_total', 'direction', UDP_DIRECTION);
  add('flannel_udp_bytes_total', 'direction', UDP_DIRECTION_BYTES);
  add('flannel_udp_dropped_packets_total', 'reason', UDP_DROPS);
  add('flannel_udp_errors_total', 'op', UDP_ERRORS);
  add('flannel_udp_io_calls_total', 'op', UDP_CALLS);
  return out;
}

/** The wireguard devices, once per scrape for the four metrics (the backend bounds and caches the read). */
async function wireguardDevices(): Promise<WireguardDeviceStats[]> {
  try {
    return (await source?.backendScrape?.())?.wireguard ?? [];
  } catch {
    return [];
  }
}

function wireguardGauge(name: string, help: string, value: (d: WireguardDeviceStats) => number): void {
  new Gauge({
    name, help, labelNames: ['device'], registers,
    async collect(this: Gauge<string>) {
      this.reset();
      for (const d of await wireguardDevices()) this.set({ device: d.device }, value(d));
    },
  });
}

let registered = false;

/** Defines the scrape-time metrics once per process, and points them at `next`. */
export function serveDaemonMetrics(next: ScrapeSource): void {
  source = next;
  if (registered) return;
  registered = true;
  collectDefaultMetrics({ register: metricsRegistry });
  // prom-client names three gauges *_total, which Prometheus reserves for counters (promtool says so);
  // the same figures remain, by type, in nodejs_active_handles, nodejs_active_requests, nodejs_active_resources.
  for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) {
    metricsRegistry.removeSingleMetric(name);
  }
  new Gauge({
    name: 'flannel_build_info',
    help: 'Always 1; the labels name the flanneld-ts version and the Node.js runtime.',
    labelNames: ['version', 'nodejs_version'],
    registers,
  }).set({ version: VERSION, nodejs_version: process.version }, 1);
  new Gauge({
    name: 'flannel_ready',
    help: '1 once this node holds its subnet lease and has written the subnet env file (as /readyz), else 0.',
    registers,
    collect(this: Gauge<string>) {
      this.set(source?.ready() ? 1 : 0);
    },
  });
  new Gauge({
    name: 'flannel_subnet_info',
    help: "Always 1 while this node holds a lease; the labels name it.",
    labelNames: ['subnet', 'network', 'backend', 'public_ip'],
    registers,
    collect(this: Gauge<string>) {
      this.reset();
      const lease = source?.lease?.();
      if (lease) this.set({ subnet: lease.subnet, network: lease.network, backend: lease.backend, public_ip: lease.publicIP }, 1);
    },
  });
  new Gauge({
    name: 'flannel_lease_expiry_timestamp_seconds',
    help: "When this node's etcd lease runs out unless renewed (Unix time); absent for a reservation.",
    registers,
    collect(this: Gauge<string>) {
      this.reset();
      const expiration = source?.lease?.()?.expiration;
      if (expiration) this.set(expiration.getTime() / 1000);
    },
  });
  udpCounter('flannel_udp_packets_total', 'Packets through the udp backend: tx from flannel0 to peers, rx from peers to flannel0.', 'direction', UDP_DIRECTION);
  udpCounter('flannel_udp_bytes_total', 'Inner IP bytes through the udp backend, by direction.', 'direction', UDP_DIRECTION_BYTES);
  udpCounter('flannel_udp_dropped_packets_total', 'Packets the udp backend dropped (bad_tcp_checksum: handed to the pod uncoalesced, for its kernel to drop), by reason.', 'reason', UDP_DROPS);
  udpCounter('flannel_udp_errors_total', 'Failed udp backend writes (UDP send, TUN write), by operation.', 'op', UDP_ERRORS);
  udpCounter('flannel_udp_io_calls_total', 'System calls of the udp data path, by operation (the _gso/_gro ones moved several packets at once).', 'op', UDP_CALLS);
  udpScalar('counter', 'flannel_udp_icmp_unreachable_sent_total', 'ICMP net-unreachable errors the udp backend sent for packets to no known subnet.', 'icmpUnreachableSent');
  udpScalar('gauge', 'flannel_udp_routes', "Remote subnets in the udp forwarder's table.", 'leases');
  udpScalar('counter', 'flannel_udp_table_swaps_total', "Times the udp forwarder's subnet table was replaced (lease changes are coalesced into few swaps).", 'tableSwaps');
  udpScalar('gauge', 'flannel_udp_rx_max_datagram_bytes', 'Largest datagram the udp backend has received.', 'rxMaxDatagram');
  wireguardGauge('flannel_wireguard_peers', 'WireGuard peers on each device of the wireguard backend.', (d) => d.peers);
  wireguardGauge(
    'flannel_wireguard_peers_handshake_stale',
    'WireGuard peers whose latest handshake is older than 3 minutes, or who never completed one (an idle peer without keepalive has none).',
    (d) => d.staleHandshakes,
  );
  new Counter({
    name: 'flannel_wireguard_bytes_total',
    help: "Bytes through each WireGuard device, summed over its peers, by direction (rx from peers, tx to peers); resets when the device is made again.",
    labelNames: ['device', 'direction'],
    registers,
    async collect(this: Counter<string>) {
      this.reset();
      for (const d of await wireguardDevices()) {
        this.inc({ device: d.device, direction: 'rx' }, d.rxBytes);
        this.inc({ device: d.device, direction: 'tx' }, d.txBytes);
      }
    },
  });
}
