// Renders the lease table printed by `flannelctl leases`. Every cell that comes from etcd goes
// through printable(): a key or value holding terminal escapes must not rewrite the screen.
import { printable } from '../common/printable.js';
import type { InvalidLeaseKey, LeaseRecord } from '../etcd/registry.js';

/** Longest key shown for an invalid lease; junk keys can be megabytes long. */
const MAX_KEY_CHARS = 120;

export interface LeaseRow {
  record: LeaseRecord;
  /** Seconds left on the etcd lease; null for a reservation. */
  ttlSeconds: number | null;
}

export function formatDuration(seconds: number): string {
  if (seconds <= 0) return 'expired';
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = Math.floor(seconds % 60);
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : m > 0 ? `${m}m${String(s).padStart(2, '0')}s` : `${s}s`;
}

export function vtepMacOf(record: LeaseRecord): string {
  const { backend } = record.attrs;
  return backend.type === 'vxlan' ? backend.vtep.mac : '-';
}

/** A wireguard lease's public key (its devices share one), or null. */
export function publicKeyOf(record: LeaseRecord): string | null {
  const { backend } = record.attrs;
  return backend.type === 'wireguard' ? backend.peer.publicKey : null;
}

export function renderLeaseTable(rows: LeaseRow[], invalid: InvalidLeaseKey[], now = new Date()): string {
  // Dual stack: two more columns, only when some lease has an IPv6 subnet (IPv4-only output is unchanged).
  const dual = rows.some((r) => r.record.ipv6Subnet);
  const v6 = (...cells: string[]): string[] => (dual ? cells : []);
  // The backend's identity of a node: vxlan's VTEP MAC, wireguard's public key (the column says which).
  const keys = rows.some((r) => r.record.attrs.backend.type === 'wireguard');
  const macs = !keys || rows.some((r) => r.record.attrs.backend.type === 'vxlan');
  const identity = [...(macs ? ['VTEP MAC'] : []), ...(keys ? ['PUBLIC KEY'] : [])].join(' / ');
  const header = ['SUBNET', ...v6('IPV6 SUBNET'), 'PUBLIC IP', ...v6('PUBLIC IPV6'), 'BACKEND', identity, 'EXPIRES'];
  const sorted = [...rows].sort((a, b) => a.record.subnet.ip - b.record.subnet.ip);
  const lines = sorted.map(({ record, ttlSeconds }) => [
    record.subnet.toString(),
    ...v6(record.ipv6Subnet?.toString() ?? '-'),
    printable(record.attrs.publicIP, 40),
    ...v6(printable(record.attrs.publicIPv6 ?? '-', 60)),
    record.attrs.backend.type,
    publicKeyOf(record) ?? vtepMacOf(record),
    ttlSeconds === null
      ? 'reserved'
      : `${new Date(now.getTime() + ttlSeconds * 1000).toISOString().replace(/\.\d+Z$/, 'Z')} (in ${formatDuration(ttlSeconds)})`,
  ]);
  for (const bad of invalid) {
    const ipv6 = v6(bad.ipv6Subnet?.toString() ?? '-');
    lines.push([bad.subnet?.toString() ?? printable(bad.key, MAX_KEY_CHARS), ...ipv6, '-', ...v6('-'), 'INVALID', '-', printable(bad.reason, 300)]);
  }
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  return [fmt(header), ...lines.map(fmt)].join('\n') + '\n';
}
