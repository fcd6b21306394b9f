// Control-plane scale: one node of ours (bin/flanneld in a namespace) joins a network that already
// holds N leases (/29 subnets in 198.19.0.0/16, all bound to one etcd lease so that setting them
// up is quick), for N = 100, 1,000, 5,000 and both backends:
//   start → env file, start → all N peers programmed, RSS then;
//   a burst of 1,000 new leases put at once → all programmed, RSS then;
// and, driving the vxlan backend directly in a namespace, the event-loop time of one resync pass.
// "Programmed" is the route count on flannel.1 (vxlan) or the forwarder's table size (udp, from
// /metrics: the table swap follows the count within the same turn of the event loop).
// Writes docs/benchmarks.md (the section between the scale markers) and docs/img/scale.svg.
// Run: npm run bench:scale [-- --sizes=100,1000,5000] [--burst=1000] [--no-write]
import { udpStatsFromMetrics } from '../testbed/udp-probes.js';
import { copyFileSync, existsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { BackendContext } from '../src/backend/backend.js';
import { UdpBackend } from '../src/backend/udp/udp-backend.js';
import { VxlanBackend } from '../src/backend/vxlan/vxlan-backend.js';
import { silentLogger } from '../src/common/log.js';
import { ipBatch } from '../src/routes/ip.js';
import { parseNetworkConfig, type UdpBackendConfig, type VxlanBackendConfig } from '../src/subnet/config.js';
import { Ip4Net } from '../src/common/ip4.js';
import type { Lease } from '../src/subnet/lease.js';
import { createCluster, repoRoot, rssKiB, type Cluster, type ClusterNode } from '../testbed/cluster.js';
import { addLoneNodeNetns, delNetns, run, runId, sleep } from '../testbed/netns.js';
import { nodeScript } from '../testbed/udp-probes.js';
import { benchStamp, writeBenchImage, writeBenchSection } from './docs-section.js';
import { lineChart } from './svg-plot.js';

const argValue = (name: string): string | undefined => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1];
const SIZES = (argValue('sizes') ?? '100,1000,5000').split(',').map(Number).filter((n) => n > 0);
const BURST = Number(argValue('burst') ?? 1000);
const RESYNC_SIZES = (argValue('resync-sizes') ?? '100,1000,4000,5000').split(',').map(Number).filter((n) => n > 0);
const WRITE = !process.argv.includes('--no-write');
const PREFIX = '/coreos.com/network';
const HEALTH_PORT = 9878;
const NETWORK = Ip4Net.parse('198.19.0.0/16');
type Kind = 'vxlan' | 'udp';

let current: Cluster | null = null;
const namespaces: string[] = [];
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    console.error(`\n${signal}: removing the bench cluster`);
    void (current?.destroy() ?? Promise.resolve())
      .then(() => Promise.all(namespaces.map((ns) => delNetns(ns))))
      .finally(() => process.exit(130));
  });
}

/** The i-th /29 of the Network, from the 64th on (the first ones are left for the node itself). */
const subnetAt = (i: number): Ip4Net => new Ip4Net(NETWORK.ip + (64 + i) * 8, 29);
const mac = (i: number): string => `02:5b:00:${(i >> 16).toString(16).padStart(2, '0')}:${((i >> 8) & 255).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`;

function leaseValue(kind: Kind, i: number): string {
  const publicIP = `198.18.0.${10 + (i % 240)}`;
  return JSON.stringify(kind === 'vxlan'
    ? { PublicIP: publicIP, PublicIPv6: null, BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: mac(i) } }
    : { PublicIP: publicIP, PublicIPv6: null });
}

/** Puts all items at once through one etcd3 client, bound to one etcd lease. */
const PUTS = `
import { readFileSync } from 'node:fs';
import { Etcd3 } from 'etcd3';
const [endpoint, file] = process.argv.slice(1);
const items = JSON.parse(readFileSync(file, 'utf8'));
const client = new Etcd3({ hosts: endpoint });
const lease = client.lease(7200, { autoKeepAlive: false });
await lease.grant();
console.log('ready');
await Promise.all(items.map(([k, v]) => lease.put(k).value(v)));
client.close();
console.log(items.length);`;

/** Resolves, once every put is acknowledged, with when the connected client started putting and when it was done. */
async function putLeases(cluster: Cluster, kind: Kind, from: number, count: number, skip: Ip4Net | null = null): Promise<{ started: number; done: number }> {
  // Never the node's own subnet: overwriting it would make the node move (a different measurement).
  const indexes: number[] = [];
  for (let i = from; indexes.length < count; i++) if (!skip || !subnetAt(i).overlaps(skip)) indexes.push(i);
  const items = indexes.map((i) => [`${PREFIX}/subnets/${subnetAt(i).toKey()}`, leaseValue(kind, i)]);
  const file = join(cluster.tmpDir, `leases-${from}.json`);
  writeFileSync(file, JSON.stringify(items));
  const script = nodeScript(cluster.hubNs, PUTS, [cluster.etcdEndpoint, file], 120_000);
  await script.ready;
  const started = performance.now();
  const out = await script.done;
  if (out !== String(count)) throw new Error(`put ${out} of ${count} leases`);
  return { started, done: performance.now() };
}

async function programmed(kind: Kind, node: ClusterNode): Promise<number> {
  if (kind === 'vxlan') {
    const res = await run(['ip', '-n', node.ns, '-4', 'route', 'show', 'dev', 'flannel.1'], { allowFail: true });
    return res.code === 0 ? res.stdout.split('\n').filter((l) => l.includes(' via ')).length : 0;
  }
  return (await udpStatsFromMetrics(node.ns, HEALTH_PORT))['leases'] ?? 0;
}

/** Polls until `want` peers are programmed; returns the time it happened (ms since the epoch of `performance`). */
async function until(kind: Kind, node: ClusterNode, want: number, timeoutMs: number): Promise<number | null> {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    if ((await programmed(kind, node)) >= want) return performance.now();
    await sleep(10);
  }
  return null;
}

interface JoinResult {
  kind: Kind;
  n: number;
  envMs: number;
  allMs: number | null;
  rssMiB: number;
  /** How long etcd took to acknowledge every put of the burst (the client side). */
  putsMs: number;
  burstMs: number | null;
  rssAfterBurstMiB: number;
}

async function joinRun(kind: Kind, n: number): Promise<JoinResult> {
  const cluster = await createCluster({
    nodes: 1,
    startDaemons: false,
    config: { Network: NETWORK.toString(), SubnetLen: 29, Backend: { Type: kind } },
  });
  current = cluster;
  try {
    const node = cluster.nodes[0]!;
    await putLeases(cluster, kind, 0, n);
    const t0 = performance.now();
    await cluster.startDaemon(node, ['--log-level=info', '--healthz-ip=127.0.0.1', `--healthz-port=${HEALTH_PORT}`]);
    const envMs = performance.now() - t0;
    const all = await until(kind, node, n, 60_000);
    await sleep(500);
    const rssMiB = rssKiB(node.pid!) / 1024;
    const own = Ip4Net.parse((await node.env())['FLANNEL_SUBNET']!, true);
    const puts = await putLeases(cluster, kind, n, BURST, own);
    const b0 = puts.started;
    const burstDone = await until(kind, node, n + BURST, 120_000);
    await sleep(500);
    const rssAfterBurstMiB = rssKiB(node.pid!) / 1024;
    return { kind, n, envMs, allMs: all === null ? null : all - t0, rssMiB, putsMs: puts.done - puts.started, burstMs: burstDone === null ? null : burstDone - b0, rssAfterBurstMiB };
  } finally {
    // The daemon's log outlives the cluster, for a look at a surprising figure.
    copyFileSync(cluster.nodes[0]!.logFile, join(tmpdir(), `flannel-bench-scale-${kind}-${n}.log`));
    await cluster.destroy();
    current = null;
  }
}

interface ResyncResult {
  /** vxlan (netlink), vxlan (ip -batch) or udp. */
  label: string;
  kind: Kind;
  n: number;
  /** 'unchanged': the kernel as the last pass left it; 'repair': one route deleted by hand before each pass. */
  state: 'unchanged' | 'repair';
  /** Event-loop busy time of one pass (median of 5), ms. */
  loopMs: number;
  /** CPU time of this process (all its threads, not the ip/bridge children) during one pass (median of 5), ms. */
  cpuMs: number;
  /** Wall time of one pass (median of 5), ms. */
  wallMs: number;
  /** Longest single event-loop turn seen during the passes, ms. */
  longestTurnMs: number;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** Drives a backend directly in a namespace with N peers and times its resync pass. */
async function resyncRun(kind: Kind, n: number, kernelPath: 'netlink' | 'iproute2' = 'netlink'): Promise<ResyncResult[]> {
  const ns = `fl-${runId()}-scale`;
  namespaces.push(ns);
  try {
    await addLoneNodeNetns(ns);
    const network = parseNetworkConfig(JSON.stringify({ Network: NETWORK.toString(), SubnetLen: 29, Backend: { Type: kind } }));
    const ctx: BackendContext = { extIface: { name: 'eth0', ifaceIP: '198.18.0.1', publicIP: '198.18.0.1', mtu: 1500 }, network, log: silentLogger };
    const backend = kind === 'vxlan'
      ? new VxlanBackend(ctx, network.backend as VxlanBackendConfig, { netns: ns, resyncIntervalMs: 0, kernelPath })
      : new UdpBackend(ctx, network.backend as UdpBackendConfig, { netns: ns, resyncIntervalMs: 3_600_000 });
    try {
      const ann = await backend.prepare();
      const own: Lease = { subnet: subnetAt(-1), attrs: { publicIP: '198.18.0.1', publicIPv6: null, backend: ann.backend }, expiration: null };
      await backend.setOwnLease(own);
      await backend.handleLeaseEvents(Array.from({ length: n }, (_, i) => ({
        type: 'added' as const,
        lease: { subnet: subnetAt(i), attrs: { publicIP: `198.18.0.${10 + (i % 240)}`, publicIPv6: null, backend: kind === 'vxlan' ? { type: 'vxlan', vtep: { vni: 1, mac: mac(i) }, vtepV6: null } : { type: kind } }, expiration: null },
      })));
      const results: ResyncResult[] = [];
      for (const state of ['unchanged', 'repair'] as const) {
        if (state === 'repair' && kind === 'udp') continue; // udp keeps no per-peer kernel entries
        const loop: number[] = [];
        const wall: number[] = [];
        const cpu: number[] = [];
        let longest = 0;
        for (let k = 0; k < 6; k++) {
          if (state === 'repair') await ipBatch([['route', 'del', subnetAt(k * 7).toString()]], { netns: ns });
          // The longest turn: a timer that should fire every 1 ms notes how late it was.
          let last = performance.now();
          const probe = setInterval(() => {
            const now = performance.now();
            longest = Math.max(longest, now - last - 1);
            last = now;
          }, 1);
          const elu0 = performance.eventLoopUtilization();
          const cpu0 = process.cpuUsage();
          const t0 = performance.now();
          if (backend instanceof VxlanBackend) await backend.resync();
          else await backend.resyncNow();
          const w = performance.now() - t0;
          const l = performance.eventLoopUtilization(elu0).active;
          const c = process.cpuUsage(cpu0);
          clearInterval(probe);
          if (k === 0) continue; // the first pass after the load is a full one in both states
          wall.push(w);
          loop.push(l);
          cpu.push((c.user + c.system) / 1000);
        }
        results.push({ label: kind === 'udp' ? 'udp' : `vxlan (${kernelPath === 'netlink' ? 'netlink' : 'ip -batch'})`, kind, n, state, loopMs: median(loop), cpuMs: median(cpu), wallMs: median(wall), longestTurnMs: longest });
      }
      return results;
    } finally {
      await backend.close();
    }
  } finally {
    await delNetns(ns);
    namespaces.splice(namespaces.indexOf(ns), 1);
  }
}

const fmt = (ms: number | null): string => (ms === null ? 'timeout' : ms >= 10 ? Math.round(ms).toLocaleString('en-US') : ms.toFixed(1));

async function main(): Promise<void> {
  if (!existsSync(join(repoRoot(), 'dist', 'daemon', 'main.js'))) throw new Error('run `npm run build` first');
  const joins: JoinResult[] = [];
  for (const kind of ['vxlan', 'udp'] as const) {
    for (const n of SIZES) {
      const r = await joinRun(kind, n);
      joins.push(r);
      console.log(`${kind} N=${n}: start→env ${fmt(r.envMs)} ms, start→all ${fmt(r.allMs)} ms, RSS ${r.rssMiB.toFixed(0)} MiB; burst of ${BURST} → all ${fmt(r.burstMs)} ms (puts acknowledged after ${fmt(r.putsMs)} ms), RSS ${r.rssAfterBurstMiB.toFixed(0)} MiB`);
    }
  }
  const resyncs: ResyncResult[] = [];
  for (const [kind, path] of [['vxlan', 'netlink'], ['vxlan', 'iproute2'], ['udp', 'netlink']] as const) {
    for (const n of RESYNC_SIZES) {
      for (const r of await resyncRun(kind, n, path)) {
        resyncs.push(r);
        console.log(`${r.label} resync pass at ${n} peers (${r.state}): event loop ${fmt(r.loopMs)} ms, CPU ${fmt(r.cpuMs)} ms, wall ${fmt(r.wallMs)} ms, longest turn ${fmt(r.longestTurnMs)} ms`);
      }
    }
  }
  if (!WRITE) return;
  const { date, commit } = benchStamp();
  const svg = lineChart({
    title: `A node joining N existing leases (${date}, ${commit})`,
    xLabel: 'existing leases N (log scale)',
    yLabel: 'ms',
    series: [
      ...(['vxlan', 'udp'] as const).map((kind) => ({ name: `${kind}: start → all N`, points: joins.filter((j) => j.kind === kind && j.allMs !== null).map((j) => ({ x: j.n, y: Math.round(j.allMs!) })), color: kind === 'vxlan' ? '#1f77b4' : '#d62728' })),
      ...(['vxlan', 'udp'] as const).map((kind) => ({ name: `${kind}: start → env file`, points: joins.filter((j) => j.kind === kind).map((j) => ({ x: j.n, y: Math.round(j.envMs) })), color: kind === 'vxlan' ? '#1f77b4' : '#d62728', dashed: true })),
      ...(['vxlan', 'udp'] as const).map((kind) => ({ name: `${kind}: burst of ${BURST} → all`, points: joins.filter((j) => j.kind === kind && j.burstMs !== null).map((j) => ({ x: j.n, y: Math.round(j.burstMs!) })), color: kind === 'vxlan' ? '#2ca02c' : '#ff7f0e' })),
    ],
    marks: [{ y: 1000, label: 'goal: start → all 5,000 ≤ 1 s' }, { y: 2000, label: 'goal: burst → all ≤ 2 s' }],
  });
  writeBenchImage('scale.svg', svg);

  const rows = joins.map((j) => `| ${j.kind} | ${j.n.toLocaleString('en-US')} | ${fmt(j.envMs)} | ${fmt(j.allMs)} | ${j.rssMiB.toFixed(0)} | ${fmt(j.burstMs)} | ${fmt(j.putsMs)} | ${j.rssAfterBurstMiB.toFixed(0)} |`);
  const resyncRows = resyncs.map((r) => `| ${r.label} | ${r.n.toLocaleString('en-US')} | ${r.state === 'unchanged' ? 'kernel unchanged' : 'one route deleted by hand'} | ${fmt(r.loopMs)} | ${fmt(r.cpuMs)} | ${fmt(r.wallMs)} | ${fmt(r.longestTurnMs)} |`);
  writeBenchSection('scale', 'bench/scale.ts', [
    `Measured ${date} at commit \`${commit}\` (\`npm run bench:scale\`; 2 shared cores, other test runs sharing the machine).`,
    '',
    `| backend | existing leases N | start → env file (ms) | start → all N programmed (ms) | RSS then (MiB) | burst of ${BURST.toLocaleString('en-US')} → all programmed (ms) | of which etcd acknowledging the puts (ms) | RSS after the burst (MiB) |`,
    '|---|---|---|---|---|---|---|---|',
    ...rows,
    '',
    'One resync pass (the periodic full reconcile), the backend driven directly in a namespace, median of 5:',
    '',
    '| backend | peers | kernel before the pass | event-loop busy time (ms) | CPU time of the process (ms) | wall time (ms) | longest event-loop turn (ms) |',
    '|---|---|---|---|---|---|---|',
    ...resyncRows,
    '',
    '![time against N](img/scale.svg)',
  ]);
  console.log(`wrote docs/benchmarks.md and docs/img/scale.svg (${commit})`);
}

main().catch(async (err: unknown) => {
  console.error(err);
  await current?.destroy().catch(() => undefined);
  for (const ns of namespaces) await delNetns(ns);
  process.exit(1);
});
