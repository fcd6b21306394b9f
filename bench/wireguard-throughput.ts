// wireguard backend figures against our vxlan backend, measured in the same run on the same topology:
// two 2-node clusters of real bin/flanneld daemons side by side, one vxlan and one wireguard (the kernel
// module where this kernel has it, else wireguard-go), and per round on each: pod → pod iperf3 TCP
// throughput, then the mean ping round trip. The two alternate round by round, and which goes first
// alternates too, so that drift in the machine's load hits both alike. The CPU that wireguard-go used
// on both nodes during its iperf3 runs is read from /proc.
// Writes docs/benchmarks.md (the section between the wireguard markers), docs/img/wireguard.svg
// (throughput) and docs/img/wireguard-rtt.svg (round trip).
// Run: npm run bench:wireguard [-- --seconds=8 --rounds=4 --pings=100 --no-write]
import { readFileSync } from 'node:fs';
import { createCluster, type Cluster, type ClusterNode } from '../testbed/cluster.js';
import { iperfMbps, pingRttMs } from '../testbed/iperf.js';
import { run, waitFor } from '../testbed/netns.js';
import { benchStamp, writeBenchImage, writeBenchSection } from './docs-section.js';
import { lineChart } from './svg-plot.js';

const arg = (name: string, fallback: number): number => {
  const hit = process.argv.find((a) => a.startsWith(`--${name}=`));
  return hit ? Number(hit.split('=')[1]) : fallback;
};
const SECONDS = arg('seconds', 8);
const ROUNDS = arg('rounds', 4);
const PINGS = arg('pings', 100);
const WRITE = !process.argv.includes('--no-write');
const NETWORK = '198.19.0.0/16';

type Kind = 'vxlan' | 'wireguard';
const clusters = new Map<Kind, Cluster>();
async function cleanup(): Promise<void> {
  for (const c of clusters.values()) await c.destroy().catch(() => {});
  clusters.clear();
}
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    console.error(`\n${signal}: removing the bench clusters`);
    void cleanup().finally(() => process.exit(130));
  });
}

/** CPU seconds (user + system) used so far by the wireguard-go processes the daemon of `node` runs. */
async function wireguardGoCpu(node: ClusterNode): Promise<number> {
  const pids = (await run(['pgrep', '-P', String(node.pid), 'wireguard-go'], { allowFail: true })).stdout.split(/\s+/).filter(Boolean);
  let ticks = 0;
  for (const pid of pids) {
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    ticks += Number(f[11]) + Number(f[12]);
  }
  return ticks / 100; // USER_HZ
}

const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;

interface Round {
  kind: Kind;
  round: number;
  mbps: number;
  rttMs: number;
  /** wireguard-go's CPU, in cores, during the iperf3 run (both nodes); null for vxlan or the kernel module. */
  cores: number | null;
}

async function measure(kind: Kind, round: number): Promise<Round> {
  const c = clusters.get(kind)!;
  const [a, b] = c.nodes as [ClusterNode, ClusterNode];
  const [p1, p2] = [a.pods[0]!, b.pods[0]!];
  const up = await waitFor(() => c.ping(p1, p2.ip, { timeoutS: 1 }), 20_000, 0);
  if (!up) throw new Error(`${kind}: pods cannot reach each other\n${c.logTail(a)}`);
  const cpu0 = kind === 'wireguard' ? (await wireguardGoCpu(a)) + (await wireguardGoCpu(b)) : 0;
  const t0 = performance.now();
  const mbps = await iperfMbps(p1.ns, p2.ns, p2.ip, SECONDS);
  const wall = (performance.now() - t0) / 1000;
  const cpu = kind === 'wireguard' ? (await wireguardGoCpu(a)) + (await wireguardGoCpu(b)) - cpu0 : 0;
  const rttMs = await pingRttMs(p1.ns, p2.ip, PINGS);
  const userspace = kind === 'wireguard' && cpu > 0;
  return { kind, round, mbps, rttMs, cores: userspace ? cpu / wall : null };
}

console.log(`wireguard vs vxlan: 2 nodes each, iperf3 TCP pod -> pod ${SECONDS} s and ${PINGS} pings per run, ${ROUNDS} rounds alternating`);
try {
  for (const kind of ['vxlan', 'wireguard'] as const) {
    clusters.set(kind, await createCluster({ nodes: 2, config: { Network: NETWORK, Backend: { Type: kind } } }));
  }
  const wg = clusters.get('wireguard')!;
  const implementation = /running wireguard-go/.test(readFileSync(wg.nodes[0]!.logFile, 'utf8')) ? 'wireguard-go' : 'the kernel module';
  const mtu = { vxlan: (await clusters.get('vxlan')!.nodes[0]!.env())['FLANNEL_MTU'], wireguard: (await wg.nodes[0]!.env())['FLANNEL_MTU'] };
  console.log(`  the wireguard backend runs ${implementation}; pod MTU: vxlan ${mtu.vxlan}, wireguard ${mtu.wireguard}`);
  const rounds: Round[] = [];
  for (let round = 1; round <= ROUNDS; round++) {
    const order: Kind[] = round % 2 === 1 ? ['vxlan', 'wireguard'] : ['wireguard', 'vxlan'];
    for (const kind of order) {
      const r = await measure(kind, round);
      rounds.push(r);
      console.log(`  round ${round}: ${kind.padEnd(9)} ${r.mbps.toFixed(0).padStart(6)} Mbit/s, RTT ${r.rttMs.toFixed(3)} ms${r.cores !== null ? `, wireguard-go ${(r.cores * 100).toFixed(0)} % CPU` : ''}`);
    }
  }
  const of = (kind: Kind): Round[] => rounds.filter((r) => r.kind === kind);
  const [vx, wgr] = [of('vxlan'), of('wireguard')];
  const ratio = mean(wgr.map((r) => r.mbps)) / mean(vx.map((r) => r.mbps));
  const cores = wgr.filter((r) => r.cores !== null).map((r) => r.cores!);
  console.log(`  mean: vxlan ${mean(vx.map((r) => r.mbps)).toFixed(0)} Mbit/s, RTT ${mean(vx.map((r) => r.rttMs)).toFixed(3)} ms; wireguard ${mean(wgr.map((r) => r.mbps)).toFixed(0)} Mbit/s, RTT ${mean(wgr.map((r) => r.rttMs)).toFixed(3)} ms; wireguard / vxlan ${ratio.toFixed(3)}`);
  if (WRITE) {
    const { date, commit } = benchStamp();
    writeBenchImage('wireguard.svg', lineChart({
      title: `Pod → pod iperf3 TCP, wireguard and vxlan (${date}, ${commit})`,
      xLabel: 'round (the two alternate)',
      yLabel: 'Mbit/s',
      xScale: 'linear',
      series: [
        { name: 'vxlan', points: vx.map((r) => ({ x: r.round, y: Math.round(r.mbps) })), color: '#1f77b4' },
        { name: implementation === 'wireguard-go' ? 'wireguard (wireguard-go)' : 'wireguard (kernel)', points: wgr.map((r) => ({ x: r.round, y: Math.round(r.mbps) })), color: '#d62728' },
      ],
    }));
    writeBenchImage('wireguard-rtt.svg', lineChart({
      title: `Pod → pod ping round trip, wireguard and vxlan (${date}, ${commit})`,
      xLabel: 'round (the two alternate)',
      yLabel: `ms (mean of ${PINGS})`,
      xScale: 'linear',
      series: [
        { name: 'vxlan', points: vx.map((r) => ({ x: r.round, y: +r.rttMs.toFixed(3) })), color: '#1f77b4' },
        { name: implementation === 'wireguard-go' ? 'wireguard (wireguard-go)' : 'wireguard (kernel)', points: wgr.map((r) => ({ x: r.round, y: +r.rttMs.toFixed(3) })), color: '#d62728' },
      ],
    }));
    const rows = [...Array(ROUNDS).keys()].map((i) => {
      const [v, w] = [vx[i]!, wgr[i]!];
      return `| ${i + 1} | ${v.mbps.toFixed(0)} | ${v.rttMs.toFixed(3)} | ${w.mbps.toFixed(0)} | ${w.rttMs.toFixed(3)} | ${w.cores === null ? '–' : `${(w.cores * 100).toFixed(0)} %`} | ${(w.mbps / v.mbps).toFixed(3)} |`;
    });
    writeBenchSection('wireguard', 'bench/wireguard-throughput.ts', [
      `Measured ${date} at commit \`${commit}\` (\`npm run bench:wireguard\`: ${ROUNDS} rounds, iperf3 ${SECONDS} s and ${PINGS} pings per run; the wireguard backend ran ${implementation}; pod MTU vxlan ${mtu.vxlan}, wireguard ${mtu.wireguard}; 2 shared cores, other test runs sharing the machine).`,
      '',
      '| round | vxlan (Mbit/s) | vxlan RTT (ms) | wireguard (Mbit/s) | wireguard RTT (ms) | wireguard-go CPU (both nodes) | wireguard / vxlan |',
      '|---|---|---|---|---|---|---|',
      ...rows,
      `| mean | ${mean(vx.map((r) => r.mbps)).toFixed(0)} | ${mean(vx.map((r) => r.rttMs)).toFixed(3)} | ${mean(wgr.map((r) => r.mbps)).toFixed(0)} | ${mean(wgr.map((r) => r.rttMs)).toFixed(3)} | ${cores.length ? `${(mean(cores) * 100).toFixed(0)} %` : '–'} | ${ratio.toFixed(3)} |`,
      '',
      '![wireguard and vxlan throughput per round](img/wireguard.svg) ![wireguard and vxlan round trip per round](img/wireguard-rtt.svg)',
    ]);
    console.log(`wrote docs/benchmarks.md, docs/img/wireguard.svg and docs/img/wireguard-rtt.svg (${commit})`);
  }
} finally {
  await cleanup();
}
