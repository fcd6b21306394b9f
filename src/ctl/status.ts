// flannelctl status: every node's lease from etcd and, where the node's health endpoint can be
// reached (flanneld --healthz-ip must then be an address other nodes reach), its /readyz.
import { request } from 'node:http';
import type { EtcdRegistry, InvalidLeaseKey, LeaseRecord } from '../etcd/registry.js';
import { type NetworkConfig, parseNetworkConfig } from '../subnet/config.js';
import { checkLeaseSubnet } from '../subnet/lease-validation.js';
import { type LeaseRow, formatDuration, publicKeyOf, vtepMacOf } from './leases-table.js';

export type Readiness = 'ready' | 'not ready' | 'unreachable' | 'not checked';

export interface NodeStatus {
  subnet: string;
  publicIP: string;
  backendType: string;
  vtepMAC: string | null;
  /** A wireguard node's public key (absent for other backends). */
  publicKey?: string;
  /** Seconds left on the etcd lease; null for a reservation. */
  ttlSeconds: number | null;
  reserved: boolean;
  readiness: Readiness;
  /** Why it is unreachable or not ready (HTTP status, connection error). */
  detail: string | null;
}

/** GET http://host:port/readyz with a short deadline. */
export function probeReadyz(host: string, port: number, timeoutMs: number): Promise<{ readiness: Readiness; detail: string | null }> {
  return new Promise((resolve) => {
    const req = request({ host, port, path: '/readyz', method: 'GET', timeout: timeoutMs }, (res) => {
      res.resume();
      resolve(res.statusCode === 200 ? { readiness: 'ready', detail: null } : { readiness: 'not ready', detail: `HTTP ${res.statusCode}` });
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', (err) => resolve({ readiness: 'unreachable', detail: err.message }));
    req.end();
  });
}

/**
 * Every lease with its time to live, and every key the nodes refuse: unreadable ones, and (when the
 * network config is valid) leases outside the network or of another size than SubnetLen, as the
 * daemons judge them.
 */
export async function leaseRows(registry: EtcdRegistry): Promise<{ rows: LeaseRow[]; invalid: InvalidLeaseKey[] }> {
  const [{ records, invalid }, configText] = await Promise.all([registry.listLeases(), registry.getConfig()]);
  let network: NetworkConfig | null = null;
  try {
    network = configText === null ? null : parseNetworkConfig(configText);
  } catch {
    network = null; // an invalid config is reported by `config validate`; list the keys as they are
  }
  const usable: LeaseRecord[] = [];
  const refused = [...invalid];
  for (const record of records) {
    const problem = network ? checkLeaseSubnet(record.subnet, network) : null;
    if (problem) refused.push({ key: record.key, code: problem.reason, reason: problem.detail, subnet: record.subnet, modRevision: record.modRevision });
    else usable.push(record);
  }
  const rows = await Promise.all(
    usable.map(async (record) => ({ record, ttlSeconds: record.leaseId === null ? null : await registry.leaseTimeToLive(record.leaseId) })),
  );
  return { rows, invalid: refused };
}

/** Each lease with its node's readiness; healthzPort 0 skips the probes. */
export async function collectStatus(registry: EtcdRegistry, healthzPort: number, timeoutMs: number): Promise<{ nodes: NodeStatus[]; invalid: InvalidLeaseKey[] }> {
  const { rows, invalid } = await leaseRows(registry);
  rows.sort((a, b) => a.record.subnet.ip - b.record.subnet.ip);
  const nodes = await Promise.all(
    rows.map(async ({ record, ttlSeconds }): Promise<NodeStatus> => {
      const probe = healthzPort > 0 ? await probeReadyz(record.attrs.publicIP, healthzPort, timeoutMs) : { readiness: 'not checked' as const, detail: null };
      const mac = vtepMacOf(record);
      return {
        subnet: record.subnet.toString(),
        publicIP: record.attrs.publicIP,
        backendType: record.attrs.backend.type,
        vtepMAC: mac === '-' ? null : mac,
        ...(publicKeyOf(record) !== null ? { publicKey: publicKeyOf(record)! } : {}),
        ttlSeconds,
        reserved: ttlSeconds === null,
        ...probe,
      };
    }),
  );
  return { nodes, invalid };
}

export function renderStatus(nodes: NodeStatus[], invalid: InvalidLeaseKey[]): string {
  const header = ['SUBNET', 'PUBLIC IP', 'BACKEND', 'LEASE', 'NODE'];
  const lines = nodes.map((n) => [
    n.subnet,
    n.publicIP,
    n.backendType,
    n.reserved ? 'reserved' : `expires in ${formatDuration(n.ttlSeconds ?? 0)}`,
    n.detail ? `${n.readiness} (${n.detail})` : n.readiness,
  ]);
  for (const bad of invalid) lines.push([bad.subnet?.toString() ?? bad.key, '-', 'INVALID', '-', bad.reason]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const fmt = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  return [fmt(header), ...lines.map(fmt)].join('\n') + '\n';
}
