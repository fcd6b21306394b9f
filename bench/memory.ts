// Memory of a real daemon (vxlan backend) on a node of a namespace cluster with a real etcd, with
// N leases in etcd (ours included): N = 2 (an idle 2-node network), 1,000 and 6,000 by default.
// The other nodes' leases are /29 subnets of 198.19.0.0/16 bound to one shared etcd lease, put in
// bulk (128 per transaction, through etcd's JSON gateway). For each N and each variant (how the
// daemon is launched: bin/flanneld as shipped, or node with chosen flags and environment) the
// daemon starts from a clean kernel (flannel.1 deleted), we wait until all N-1 peers' routes are on
// flannel.1, then sample its RSS for --settle seconds (two resync passes at the default 5 s) and
// report the median and peak, the figures a preloaded probe (bench/memory-probe.mjs) reads inside
// the daemon (JS heap, external, code space, private/shared pages, threads), its CPU time, and
// per-lease bytes = (RSS@6000 − RSS@1000) / 5000. --snapshots also takes a heap snapshot per N of
// the first variant and names what the heap holds and what grew (bench/heap-summary.ts).
//
// npx tsx bench/memory.ts [--n=2,1000,6000] [--variants=bin,lite,...|all] [--rounds=1] [--settle=12] [--snapshots] [--no-probe] [--json=FILE]
// Needs `npm run build` (npm run bench:memory does it) and root.
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createCluster, killPid, repoRoot, type Cluster, type ClusterNode } from '../testbed/cluster.js';
import { run, sleep, waitFor } from '../testbed/netns.js';
import { formatHeapSummary, summarizeHeapSnapshot, type HeapSummary } from './heap-summary.js';

const PREFIX = '/coreos.com/network';
const NETWORK = { Network: '198.19.0.0/16', SubnetLen: 29, Backend: { Type: 'vxlan' } };
const DEVICE = 'flannel.1';

/** How the daemon process is launched. `bin` is the product; the others run node directly. */
export interface Variant {
  name: string;
  launcher: 'bin' | 'node';
  nodeFlags?: string[];
  env?: Record<string, string>;
  /** Daemon flags after the bench's own. */
  daemonArgs?: string[];
}

export const VARIANTS: Variant[] = [
  { name: 'bin', launcher: 'bin' },
  { name: 'bin-nocni', launcher: 'bin', daemonArgs: ['--cni-socket='] },
  { name: 'plain', launcher: 'node' },
  { name: 'semi1', launcher: 'node', nodeFlags: ['--max-semi-space-size=1'] },
  { name: 'pool1', launcher: 'node', nodeFlags: ['--v8-pool-size=1'] },
  { name: 'arena2', launcher: 'node', env: { MALLOC_ARENA_MAX: '2' } },
  { name: 'uv1', launcher: 'node', env: { UV_THREADPOOL_SIZE: '1' } },
  { name: 'size', launcher: 'node', nodeFlags: ['--optimize-for-size'] },
  { name: 'semi1+size', launcher: 'node', nodeFlags: ['--max-semi-space-size=1', '--optimize-for-size'] },
  { name: 'lite', launcher: 'node', nodeFlags: ['--lite-mode'] },
  { name: 'jitless', launcher: 'node', nodeFlags: ['--jitless'] },
  { name: 'cheap', launcher: 'node', nodeFlags: ['--max-semi-space-size=1', '--v8-pool-size=1'], env: { MALLOC_ARENA_MAX: '2', UV_THREADPOOL_SIZE: '2' } },
  { name: 'cheap+size', launcher: 'node', nodeFlags: ['--max-semi-space-size=1', '--v8-pool-size=1', '--optimize-for-size'], env: { MALLOC_ARENA_MAX: '2', UV_THREADPOOL_SIZE: '2' } },
  { name: 'cheap+lite', launcher: 'node', nodeFlags: ['--max-semi-space-size=1', '--v8-pool-size=1', '--lite-mode'], env: { MALLOC_ARENA_MAX: '2', UV_THREADPOOL_SIZE: '2' } },
];

export interface ProbeStats {
  status: { rss: number; anon: number; file: number; shmem: number; threads: number };
  smaps: { privateDirty: number; privateClean: number; sharedClean: number; pss: number };
  memoryUsage: { rss: number; heapTotal: number; heapUsed: number; external: number; arrayBuffers: number };
  heap: { total_heap_size: number; used_heap_size: number; malloced_memory: number; peak_malloced_memory: number };
  spaces: { name: string; size: number; used: number; committed: number }[];
  code: { code_and_metadata_size: number; bytecode_and_metadata_size: number };
}

export interface RunResult {
  n: number;
  variant: string;
  /** spawn → all peers' routes on flannel.1 */
  programmedMs: number;
  rssMedianKiB: number;
  rssPeakKiB: number;
  /** CPU seconds used by the daemon: until programmed, and per second while idle afterwards. */
  cpuStartS: number;
  cpuIdlePerS: number;
  /** RssAnon and threads at the end of the settle time, from /proc. */
  anonKiB: number;
  threads: number;
  /** The in-process figures; null with --no-probe. */
  probe: ProbeStats | null;
  heap?: HeapSummary;
}

// --- kernel and process readings -------------------------------------------------------------

function procStatus(pid: number): { rss: number; anon: number; threads: number } {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(s)?.[1] ?? NaN);
  return { rss: kib('VmRSS'), anon: kib('RssAnon'), threads: kib('Threads') };
}

/** utime + stime of a process, in seconds. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ is 100 on Linux
}

async function routeCount(node: ClusterNode): Promise<number> {
  const res = await run(['ip', '-n', node.ns, 'route', 'show', 'dev', DEVICE], { allowFail: true });
  return res.code === 0 ? res.stdout.split('\n').filter((l) => l.trim() !== '').length : 0;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? NaN;
}

// --- leases in etcd ---------------------------------------------------------------------------

const b64 = (s: string) => Buffer.from(s).toString('base64');

/** POST to etcd's JSON gateway from inside the hub namespace (the etcd is only reachable there). */
async function gateway(cluster: Cluster, path: string, body: unknown): Promise<unknown> {
  const res = await run(['curl', '-sS', '--fail', '-X', 'POST', '--data-binary', '@-', `${cluster.etcdEndpoint}${path}`], {
    netns: cluster.hubNs, input: JSON.stringify(body), timeoutMs: 60_000,
  });
  return JSON.parse(res.stdout) as unknown;
}

/** The k-th /29 of 198.19.0.0/16 (k ≥ 1; the 0th is the network's first, never leased). */
function subnetKey(k: number): { key: string; subnet: string } {
  const ip = `198.19.${(k * 8) >> 8}.${(k * 8) & 255}`;
  return { key: `${PREFIX}/subnets/${ip}-29`, subnet: `${ip}/29` };
}

function leaseValue(k: number): string {
  const mac = `02:4d:${((k >> 16) & 255).toString(16).padStart(2, '0')}:${((k >> 8) & 255).toString(16).padStart(2, '0')}:${(k & 255).toString(16).padStart(2, '0')}:01`;
  return JSON.stringify({ PublicIP: `198.18.0.${10 + (k % 240)}`, PublicIPv6: null, BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: mac } });
}

class LeaseFiller {
  private next = 1;
  private put = 0;
  private etcdLease: string | null = null;
  constructor(private readonly cluster: Cluster, private readonly avoid: () => Promise<string>) {}

  /** Puts other nodes' leases until `others` of them exist. */
  async fillTo(others: number): Promise<void> {
    if (!this.etcdLease) {
      const grant = (await gateway(this.cluster, '/v3/lease/grant', { TTL: 7200 })) as { ID?: string };
      if (!grant.ID) throw new Error(`etcd lease grant failed: ${JSON.stringify(grant)}`);
      this.etcdLease = grant.ID;
    }
    const own = await this.avoid();
    while (this.put < others) {
      const ops: unknown[] = [];
      while (ops.length < 128 && this.put + ops.length < others) {
        const { key, subnet } = subnetKey(this.next);
        this.next++;
        if (subnet === own) continue;
        ops.push({ request_put: { key: b64(key), value: b64(leaseValue(this.next - 1)), lease: this.etcdLease } });
      }
      const res = (await gateway(this.cluster, '/v3/kv/txn', { success: ops })) as { succeeded?: boolean };
      if (!res.succeeded) throw new Error(`lease transaction failed: ${JSON.stringify(res).slice(0, 300)}`);
      this.put += ops.length;
    }
  }
}

// --- one daemon run ---------------------------------------------------------------------------

interface RunOptions {
  cluster: Cluster;
  node: ClusterNode;
  n: number;
  variant: Variant;
  settleS: number;
  /** Preload the probe (it costs the daemon about 1 MB of RSS: --no-probe leaves it out). */
  probe: boolean;
  probeDir: string;
  snapshot: boolean;
}

async function runOnce(o: RunOptions): Promise<RunResult> {
  const { cluster, node, variant } = o;
  const root = repoRoot();
  await run(['ip', '-n', node.ns, 'link', 'del', DEVICE], { allowFail: true }); // a clean kernel each run
  const daemonArgs = [`--etcd-endpoints=${cluster.etcdEndpoint}`, '--iface=eth0', `--subnet-file=${node.subnetFile}`, `--cni-socket=${node.cniSocket}`, '--log-level=info', ...(variant.daemonArgs ?? [])];
  const argv = variant.launcher === 'bin'
    ? [join(root, 'bin', 'flanneld'), ...daemonArgs]
    : [process.execPath, ...(variant.nodeFlags ?? []), join(root, 'dist', 'flanneld.mjs'), ...daemonArgs];
  const probe = `--import=${new URL('./memory-probe.mjs', import.meta.url).href}`;
  const env = { ...process.env, ...variant.env, MEMPROBE_DIR: o.probeDir, NODE_OPTIONS: `${process.env['NODE_OPTIONS'] ?? ''} ${o.probe ? probe : ''}`.trim() };
  const fd = openSync(node.logFile, 'a');
  const t0 = Date.now();
  const child = spawn('ip', ['netns', 'exec', node.ns, ...argv], { stdio: ['ignore', fd, fd], env });
  closeSync(fd);
  const pid = child.pid;
  if (pid === undefined) throw new Error('cannot spawn the daemon');
  let exited = false;
  child.once('exit', () => (exited = true));
  try {
    const others = o.n - 1;
    const programmed = await waitFor(async () => {
      if (exited) throw new Error(`daemon exited; log tail:\n${cluster.logTail(node)}`);
      return (await routeCount(node)) >= others;
    }, 300_000, 200);
    if (!programmed) throw new Error(`N=${o.n} ${variant.name}: ${others} routes not on ${DEVICE} after 300 s (have ${await routeCount(node)})`);
    const programmedMs = Date.now() - t0;
    const cpuStart = cpuSeconds(pid);
    const samples: number[] = [];
    const settleEnd = Date.now() + o.settleS * 1000;
    while (Date.now() < settleEnd) {
      samples.push(procStatus(pid).rss);
      await sleep(250);
    }
    const cpuIdlePerS = (cpuSeconds(pid) - cpuStart) / o.settleS;
    const { anon: anonKiB, threads } = procStatus(pid);
    const base = { n: o.n, variant: variant.name, programmedMs, rssMedianKiB: median(samples), rssPeakKiB: Math.max(...samples), cpuStartS: cpuStart, cpuIdlePerS, anonKiB, threads };
    if (!o.probe) return { ...base, probe: null };
    const statsFile = join(o.probeDir, `${pid}.stats.json`);
    rmSync(statsFile, { force: true });
    const snapFile = join(o.probeDir, `${pid}.heapsnapshot`);
    if (o.snapshot) writeFileSync(join(o.probeDir, `${pid}.snapshot-request`), '');
    process.kill(pid, 'SIGUSR2');
    const written = await waitFor(() => existsSync(statsFile) && (!o.snapshot || existsSync(snapFile)), 120_000, 100);
    if (!written) throw new Error(`the probe wrote no figures for pid ${pid} (is bench/memory-probe.mjs preloaded?)`);
    const result: RunResult = { ...base, probe: JSON.parse(readFileSync(statsFile, 'utf8')) as ProbeStats };
    if (o.snapshot) {
      result.heap = summarizeHeapSnapshot(snapFile, 25);
      rmSync(snapFile, { force: true });
    }
    return result;
  } finally {
    await killPid(pid, 'SIGTERM', 10_000);
  }
}

// --- report -----------------------------------------------------------------------------------

const mb = (kib: number) => (kib / 1024).toFixed(1);
const mbB = (bytes: number) => (bytes / 1048576).toFixed(1);

function table(results: RunResult[]): string {
  const lines = [
    '| N | variant | RSS median MB | RSS peak MB | anon MB | private dirty MB | heap used / total MB | new space MB | code space MB | external MB | threads | start→programmed ms | CPU to programmed s | idle CPU % |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of results) {
    const p = r.probe;
    const space = (name: string) => p?.spaces.find((s) => s.name === name)?.committed ?? 0;
    const inside = p
      ? `${mb(p.smaps.privateDirty)} | ${mbB(p.memoryUsage.heapUsed)} / ${mbB(p.memoryUsage.heapTotal)} | ${mbB(space('new_space'))} | ${mbB(space('code_space'))} | ${mbB(p.memoryUsage.external)}`
      : '- | - | - | - | -';
    lines.push(`| ${r.n} | ${r.variant}${p ? '' : ' (no probe)'} | ${mb(r.rssMedianKiB)} | ${mb(r.rssPeakKiB)} | ${mb(r.anonKiB)} | ${inside} | ` +
      `${r.threads} | ${r.programmedMs} | ${r.cpuStartS.toFixed(2)} | ${(r.cpuIdlePerS * 100).toFixed(1)} |`);
  }
  return lines.join('\n');
}

/** Over rounds: the median of each run's RSS median, the highest peak, the median start time. */
function summary(results: RunResult[]): string {
  const lines = ['| N | variant | runs | RSS median MB (median of runs) | RSS peak MB (max) | start→programmed ms (median) | idle CPU % (median) |', '|---|---|---|---|---|---|---|'];
  const keys = [...new Set(results.map((r) => `${r.n}|${r.variant}`))];
  for (const key of keys) {
    const rs = results.filter((r) => `${r.n}|${r.variant}` === key);
    lines.push(`| ${rs[0]!.n} | ${rs[0]!.variant} | ${rs.length} | ${mb(median(rs.map((r) => r.rssMedianKiB)))} | ${mb(Math.max(...rs.map((r) => r.rssPeakKiB)))} | ` +
      `${median(rs.map((r) => r.programmedMs))} | ${(median(rs.map((r) => r.cpuIdlePerS)) * 100).toFixed(1)} |`);
  }
  return lines.join('\n');
}

function perLease(results: RunResult[]): string {
  const lines: string[] = [];
  const variants = [...new Set(results.map((r) => r.variant))];
  for (const v of variants) {
    const at = (n: number) => results.filter((r) => r.variant === v && r.n === n);
    const a = at(1000);
    const b = at(6000);
    if (a.length === 0 || b.length === 0) continue;
    const rss = (median(b.map((r) => r.rssMedianKiB)) - median(a.map((r) => r.rssMedianKiB))) * 1024 / 5000;
    lines.push(`per lease (${v}): RSS ${rss.toFixed(0)} B  ((@6000 − @1000) / 5000)`);
  }
  // The live heap after a full GC (heap snapshots) is what the lease data itself takes.
  const snap = (n: number) => results.find((r) => r.n === n && r.heap)?.heap;
  const s1 = snap(1000);
  const s6 = snap(6000);
  if (s1 && s6) lines.push(`per lease, live JS heap after full GC (snapshots): ${((s6.totalBytes - s1.totalBytes) / 5000).toFixed(0)} B`);
  return lines.join('\n');
}

async function main(): Promise<void> {
  const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const ns = (arg('n') ?? '2,1000,6000').split(',').map(Number);
  if (ns.some((n) => !Number.isInteger(n) || n < 2 || n > 8000)) throw new Error('--n: leases between 2 and 8000');
  const wanted = arg('variants') ?? 'bin';
  const variants = wanted === 'all' ? VARIANTS : wanted.split(',').map((name) => {
    const v = VARIANTS.find((x) => x.name === name);
    if (!v) throw new Error(`unknown variant ${name}; known: ${VARIANTS.map((x) => x.name).join(', ')}`);
    return v;
  });
  const settleS = Number(arg('settle') ?? 12);
  const snapshots = process.argv.includes('--snapshots');
  const probe = !process.argv.includes('--no-probe');
  if (snapshots && !probe) throw new Error('--snapshots needs the probe');
  const rounds = Number(arg('rounds') ?? 1);
  const jsonOut = arg('json');
  const root = repoRoot();
  if (!existsSync(join(root, 'dist', 'flanneld.mjs'))) throw new Error('dist/ is missing: run npm run build');

  const probeDir = mkdtempSync(join(tmpdir(), 'flannel-membench-'));
  const cluster = await createCluster({ nodes: 1, config: NETWORK, startDaemons: false, podsPerNode: 0 });
  const results: RunResult[] = [];
  const stop = () => {
    void cluster.destroy().finally(() => process.exit(130));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    const node = cluster.nodes[0]!;
    const ownSubnet = async (): Promise<string> => {
      if (!existsSync(node.subnetFile)) return '';
      const [ip, len] = (await node.env())['FLANNEL_SUBNET']!.split('/');
      const o = ip!.split('.').map(Number);
      return `${o[0]}.${o[1]}.${o[2]}.${o[3]! - 1}/${len}`;
    };
    const filler = new LeaseFiller(cluster, ownSubnet);
    // Our node's lease first, so the filler can leave its subnet alone.
    await filler.fillTo(1);
    await cluster.startDaemon(node, ['--log-level=info']);
    await cluster.stopDaemon(node);
    for (const n of [...ns].sort((a, b) => a - b)) {
      await filler.fillTo(n - 1);
      for (let round = 0; round < rounds; round++) {
        for (const [i, variant] of variants.entries()) {
          const r = await runOnce({ cluster, node, n, variant, settleS, probe, probeDir, snapshot: snapshots && i === 0 && round === 0 });
          results.push(r);
          console.error(`N=${n} ${variant.name}: RSS median ${mb(r.rssMedianKiB)} MB, peak ${mb(r.rssPeakKiB)} MB, heap used ${r.probe ? mbB(r.probe.memoryUsage.heapUsed) : '-'} MB, programmed in ${r.programmedMs} ms`);
        }
      }
    }
  } finally {
    await cluster.destroy();
    rmSync(probeDir, { recursive: true, force: true });
  }

  console.log(`## bench:memory — ${new Date().toISOString()}, node ${process.version}, settle ${settleS} s`);
  console.log(table(results));
  if (rounds > 1) console.log(`\n${summary(results)}`);
  const pl = perLease(results);
  if (pl) console.log(`\n${pl}`);
  const snaps = results.filter((r) => r.heap);
  for (const [i, r] of snaps.entries()) {
    console.log(`\n### heap at N=${r.n} (${r.variant})\n${formatHeapSummary(r.heap!, i > 0 ? snaps[i - 1]!.heap : undefined)}`);
  }
  if (jsonOut) writeFileSync(jsonOut, JSON.stringify(results, null, 2));
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
