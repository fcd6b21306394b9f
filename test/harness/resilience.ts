// Measuring tools for the resilience tests: a continuous ping that counts what was lost, snapshots
// of a node's vxlan kernel tables, the leases in etcd as the kernel should see them, the daemon's
// JSON log, and its resident memory.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { RTPROT_KERNEL, formatIp } from '../../src/routes/entries.js';
import { readFdb } from '../../src/routes/fdb.js';
import { readNeighbours } from '../../src/routes/neigh.js';
import { readRoutesWithin } from '../../src/routes/route.js';
import { LEVEL_VALUES } from '../../src/common/log.js';
import { Ip4Net } from '../../src/common/ip4.js';
import { type Cluster, type ClusterNode, subnetOf } from '../../testbed/cluster.js';
import { run, sleep } from '../../testbed/netns.js';

export interface PingResult {
  /** Highest sequence number seen + 1 (replies only tell us what was answered). */
  sent: number;
  received: number;
  /** Sequence numbers between the first and the last reply that got no reply. */
  lost: number;
  /** The longest run of consecutive unanswered probes, in ms (interval × run length). */
  longestGapMs: number;
  intervalMs: number;
}

export interface PingMeter {
  stop(): Promise<PingResult>;
}

/**
 * `ping -i <interval>` from a namespace until stop(). Loss is counted from the icmp_seq numbers of
 * the replies, so the probe in flight when it is stopped is not counted as lost.
 */
export function startPing(netns: string, target: string, intervalMs = 50): PingMeter {
  const child = spawn('ip', ['netns', 'exec', netns, 'ping', '-n', '-i', String(intervalMs / 1000), '-W', '1', target], { stdio: ['ignore', 'pipe', 'pipe'] });
  const seqs = new Set<number>();
  let buf = '';
  child.stdout.on('data', (d: Buffer) => {
    buf += d.toString();
    const lines = buf.split('\n');
    buf = lines.pop() ?? '';
    for (const line of lines) {
      const m = /icmp_seq=(\d+)/.exec(line);
      if (m && line.includes('bytes from')) seqs.add(Number(m[1]));
    }
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  return {
    stop: async () => {
      child.kill('SIGINT');
      await exited;
      const sorted = [...seqs].sort((a, b) => a - b);
      if (sorted.length === 0) return { sent: 0, received: 0, lost: 0, longestGapMs: Infinity, intervalMs };
      const first = sorted[0]!;
      const last = sorted[sorted.length - 1]!;
      let longest = 0;
      for (let i = 1; i < sorted.length; i++) longest = Math.max(longest, sorted[i]! - sorted[i - 1]! - 1);
      return {
        sent: last + 1,
        received: sorted.length,
        lost: last - first + 1 - sorted.length,
        longestGapMs: longest * intervalMs,
        intervalMs,
      };
    },
  };
}

/** What a node's vxlan device sends where: routes (dst → gateway), neighbours (ip → mac), FDB (mac → dst). */
export interface VxlanTables {
  routes: Map<string, string | null>;
  neighs: Map<string, string>;
  fdb: Map<string, string>;
}

export async function vxlanTables(node: ClusterNode, device = 'flannel.1'): Promise<VxlanTables> {
  const opts = { netns: node.ns };
  const [routes, neighs, fdb] = await Promise.all([readRoutesWithin(Ip4Net.parse('0.0.0.0/0'), opts), readNeighbours(device, opts), readFdb(device, opts)]);
  return {
    routes: new Map(routes.filter((r) => r.dev === device && r.protocol !== RTPROT_KERNEL).map((r) => [r.dst.toString(), r.via === null ? null : formatIp(r.via)])),
    neighs: new Map(neighs.filter((n) => n.permanent).map((n) => [formatIp(n.ip), n.mac])),
    fdb: new Map(fdb.filter((e) => e.permanent).map((e) => [e.mac, formatIp(e.dst)])),
  };
}

/** The vxlan tables a node must have for a set of remote leases (subnet → {publicIP, vtepMac}). */
export function expectedVxlanTables(leases: Map<string, { publicIP: string; vtepMac: string }>): VxlanTables {
  const t: VxlanTables = { routes: new Map(), neighs: new Map(), fdb: new Map() };
  for (const [cidr, l] of leases) {
    const gw = cidr.split('/')[0]!;
    t.routes.set(cidr, gw);
    t.neighs.set(gw, l.vtepMac.toLowerCase());
    t.fdb.set(l.vtepMac.toLowerCase(), l.publicIP);
  }
  return t;
}

/** Differences between two table snapshots, as readable lines (empty when equal). */
export function diffTables(have: VxlanTables, want: VxlanTables): string[] {
  const out: string[] = [];
  for (const kind of ['routes', 'neighs', 'fdb'] as const) {
    for (const [k, v] of want[kind]) if (have[kind].get(k) !== v) out.push(`${kind}: missing ${k} -> ${v} (have ${have[kind].get(k) ?? 'none'})`);
    for (const [k, v] of have[kind]) if (!want[kind].has(k)) out.push(`${kind}: stale ${k} -> ${v}`);
  }
  return out;
}

/** A node's kernel tables against every well-formed vxlan lease in etcd but its own; '' when they match. */
export async function kernelVsEtcd(cluster: Cluster, node: ClusterNode, prefix = '/coreos.com/network'): Promise<string> {
  const values = parseEtcdctlJson(await cluster.etcdctl(['get', '--prefix', `${prefix}/subnets/`, '-w', 'json']));
  const want = expectedVxlanTables(vxlanLeasesFrom(values, (await subnetOf(node)).toString()));
  return diffTables(await vxlanTables(node), want).join('; ');
}

/** `etcdctl get --prefix <prefix>/subnets/ -w json` output → subnet CIDR → raw value (unparsed). */
export function parseEtcdctlJson(stdout: string): Map<string, string> {
  const res = JSON.parse(stdout) as { kvs?: { key: string; value: string }[] };
  const out = new Map<string, string>();
  for (const kv of res.kvs ?? []) {
    const key = Buffer.from(kv.key, 'base64').toString();
    const name = key.slice(key.lastIndexOf('/') + 1);
    try {
      out.set(Ip4Net.fromKey(name).toString(), Buffer.from(kv.value, 'base64').toString());
    } catch {
      /* not a subnet key */
    }
  }
  return out;
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/**
 * Remote vxlan leases a node should program, by the rules a correct daemon follows: every
 * well-formed vxlan lease (JSON object, IPv4 PublicIP, unicast VtepMAC) inside `network`, except
 * our own and any that overlaps it.
 */
export function vxlanLeasesFrom(values: Map<string, string>, own: string, network = '198.19.0.0/16'): Map<string, { publicIP: string; vtepMac: string }> {
  const out = new Map<string, { publicIP: string; vtepMac: string }>();
  const net = Ip4Net.parse(network);
  const ownNet = Ip4Net.parse(own);
  for (const [cidr, value] of values) {
    const subnet = Ip4Net.parse(cidr);
    // Every node refuses a lease outside the network or of another size than its own (the network's SubnetLen).
    if (cidr === own || !net.covers(subnet) || subnet.prefixLen !== ownNet.prefixLen || subnet.overlaps(ownNet)) continue;
    try {
      const v = JSON.parse(value) as { PublicIP?: unknown; BackendType?: unknown; BackendData?: { VtepMAC?: unknown } };
      const mac = v.BackendData?.VtepMAC;
      if (v.BackendType !== 'vxlan' || typeof v.PublicIP !== 'string' || !IPV4.test(v.PublicIP)) continue;
      if (typeof mac !== 'string' || !MAC.test(mac) || parseInt(mac.slice(0, 2), 16) & 1) continue;
      out.set(cidr, { publicIP: v.PublicIP, vtepMac: mac });
    } catch {
      /* malformed: the daemon must skip it too */
    }
  }
  return out;
}

export interface LogLine {
  level: number;
  time: number;
  msg: string;
  [field: string]: unknown;
}

/** The daemon's pino JSON lines (anything else in the file is ignored). */
export function readLog(file: string, fromOffset = 0): LogLine[] {
  if (!existsSync(file)) return [];
  // fromOffset is a byte offset (logSize): slice the bytes, not the decoded characters.
  const text = readFileSync(file).subarray(fromOffset).toString('utf8');
  const out: LogLine[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const entry = JSON.parse(line) as LogLine & { level: number | string };
      // The daemon logs level names ("warn"); the checks here compare pino's numbers.
      out.push({ ...entry, level: typeof entry.level === 'string' ? (LEVEL_VALUES[entry.level] ?? 0) : entry.level });
    } catch {
      /* a partial last line */
    }
  }
  return out;
}

export function logSize(file: string): number {
  return existsSync(file) ? statSync(file).size : 0;
}

export const WARN = 40;
export const ERROR = 50;

/** Waits for a log line (after `fromOffset`) matching `pred`; returns it, or null on timeout. */
export async function waitForLog(file: string, pred: (l: LogLine) => boolean, timeoutMs: number, fromOffset = 0): Promise<LogLine | null> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const hit = readLog(file, fromOffset).find(pred);
    if (hit) return hit;
    if (Date.now() > deadline) return null;
    await sleep(100);
  }
}

/** Prints a measured figure in one greppable line (collected into docs/reliability.md). */
export function report(what: string, figures: Record<string, unknown>): void {
  console.log(`[resilience] ${what}: ${JSON.stringify(figures)}`);
}

/**
 * `count` /24 subnets of 198.19.0.0/16 that no key in `values` (cidr → value) overlaps, and that
 * share no /23 with any of them, so fake leases never land on (or next to) a real node's subnet.
 */
export function freeSubnets(values: Map<string, string>, count: number): string[] {
  const taken = [...values.keys()].map((k) => Ip4Net.parse(k));
  const out: string[] = [];
  for (let c = 1; c < 255 && out.length < count; c++) {
    const wide = Ip4Net.parse(`198.19.${c & ~1}.0/23`);
    if (!taken.some((t) => t.overlaps(wide))) out.push(`198.19.${c}.0/24`);
  }
  if (out.length < count) throw new Error(`only ${out.length} free subnets, ${count} wanted`);
  return out;
}

/** Cuts a node off from etcd (tcp/2379 dropped both ways in its namespace), or heals the cut. */
export async function cutFromEtcd(node: ClusterNode, cut: boolean): Promise<void> {
  const op = cut ? '-A' : '-D';
  await Promise.all([
    run(['iptables', op, 'OUTPUT', '-p', 'tcp', '--dport', '2379', '-j', 'DROP'], { netns: node.ns }),
    run(['iptables', op, 'INPUT', '-p', 'tcp', '--sport', '2379', '-j', 'DROP'], { netns: node.ns }),
  ]);
}
