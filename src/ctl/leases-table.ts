// Renders the lease table printed by `flannelctl leases`.
import type { InvalidLeaseKey, LeaseRecord } from '../etcd/registry.js';

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
  const mac = record.attrs.backendData?.['VtepMAC'];
  return typeof mac === 'string' ? mac : '-';
}

export function renderLeaseTable(rows: LeaseRow[], invalid: InvalidLeaseKey[], now = new Date()): string {
  // Dual stack: two more columns, only when some lease has an IPv6 subnet (IPv4-only output is unchanged).
  const dual = rows.some((r) => r.record.ipv6Subnet);
  const v6 = (...cells: string[]): string[] => (dual ? cells : []);
  const header = ['SUBNET', ...v6('IPV6 SUBNET'), 'PUBLIC IP', ...v6('PUBLIC IPV6'), 'BACKEND', 'VTEP MAC', 'EXPIRES'];
  const sorted = [...rows].sort((a, b) => a.record.subnet.ip - b.record.subnet.ip);
  const lines = sorted.map(({ record, ttlSeconds }) => [
    record.subnet.toString(),
    ...v6(record.ipv6Subnet?.toString() ?? '-'),
    record.attrs.publicIP,
    ...v6(record.attrs.publicIPv6 ?? '-'),
    record.attrs.backendType,
    vtepMacOf(record),
    ttlSeconds === null
      ? 'reserved'
      : `${new Date(now.getTime() + ttlSeconds * 1000).toISOString().replace(/\.\d+Z$/, 'Z')} (in ${formatDuration(ttlSeconds)})`,
  ]);
  for (const bad of invalid) lines.push([bad.subnet?.toString() ?? bad.key, ...v6(bad.ipv6Subnet?.toString() ?? '-'), '-', ...v6('-'), 'INVALID', '-', bad.reason]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  return [fmt(header), ...lines.map(fmt)].join('\n') + '\n';
}
