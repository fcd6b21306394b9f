// Pod -> pod TCP throughput through the udp backend's data path, against kernel VXLAN set up by
// hand on the same two-node topology in the same run (the machine is shared and noisy: only
// figures from one run compare). Also prints ping RTT for both.
//
//   npm install && npm run build
//   npx tsx bench/udp-throughput.ts [--seconds 10] [--rounds 3] [--steps] [--source-check] [--workers N]
//                                   [--daemon] [--plot FILE.svg]
//
// Default: the bench process hosts both nodes' forwarders (UdpForwarder, the code UdpBackend runs),
// each inside its node's namespace, on testbed/udp-topology.ts (the testbed cluster's topology
// without etcd); with several rows, their rounds alternate (row 1, row 2, ..., row 1, ...) so that
// the machine's load drifts over all of them alike. --daemon runs the real bin/flanneld on the
// testbed cluster instead.
// --steps measures each data-path optimisation on its own (docs/udp.md lists the results).
// --source-check measures the AllowedIPs check on received datagrams: the data path with it and
// without it (docs/benchmarks.md).
// --plot draws each row's rounds (Mbit/s) and the kernel VXLAN reference into an SVG file.
import { writeFileSync } from 'node:fs';
import { UdpForwarder, type UdpForwarderOptions } from '../src/backend/udp/native.js';
import { ipBatch } from '../src/routes/ip.js';
import { Ip4Net, formatIp4, parseIp4 } from '../src/common/ip4.js';
import { createCluster, type Cluster } from '../testbed/cluster.js';
import { run, sleep } from '../testbed/netns.js';
import { OVERLAY, addressFlannel0, createTopology, type Topology } from '../testbed/udp-topology.js';
import { lineChart } from './svg-plot.js';

interface Args {
  seconds: number;
  rounds: number;
  steps: boolean;
  workers: number;
  daemon: boolean;
  sourceCheck: boolean;
  plot: string | null;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { seconds: 10, rounds: 3, steps: false, workers: 1, daemon: false, sourceCheck: false, plot: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): number => {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < 1) throw new Error(`${a} needs a positive integer`);
      return v;
    };
    if (a === '--seconds') args.seconds = value();
    else if (a === '--rounds') args.rounds = value();
    else if (a === '--workers') args.workers = value();
    else if (a === '--steps') args.steps = true;
    else if (a === '--daemon') args.daemon = true;
    else if (a === '--source-check') args.sourceCheck = true;
    else if (a === '--plot') {
      args.plot = argv[++i] ?? '';
      if (!args.plot.endsWith('.svg')) throw new Error('--plot needs a file name ending in .svg');
    }
    else throw new Error(`unknown argument ${a} (see the header of bench/udp-throughput.ts)`);
  }
  return args;
}

/** One node of whichever topology is in use. */
interface BenchNode {
  ns: string;
  ip: string;
  subnet: Ip4Net;
  podNs: string;
  podIp: string;
  /** The pod's veth end inside the node namespace (a port of cni0). */
  podPort: string;
}

interface Measurement {
  label: string;
  mbits: number[];
  retransmits: number[];
  rttMs: number | null;
  /** CPU seconds the forwarders used per second of transfer (in-process mode only). */
  cpu: number[];
}

async function iperf(from: BenchNode, to: BenchNode, seconds: number): Promise<{ mbits: number; retransmits: number }> {
  const server = run(['iperf3', '-s', '-1', '-p', '5201'], { netns: to.podNs, allowFail: true, timeoutMs: (seconds + 30) * 1000 });
  try {
    for (let attempt = 0; ; attempt++) {
      await sleep(200);
      const res = await run(['iperf3', '-c', to.podIp, '-p', '5201', '-t', String(seconds), '-J'], {
        netns: from.podNs,
        allowFail: true,
        timeoutMs: (seconds + 20) * 1000,
      });
      if (res.code === 0) {
        const j = JSON.parse(res.stdout) as { end: { sum_received: { bits_per_second: number }; sum_sent: { retransmits?: number } } };
        return { mbits: j.end.sum_received.bits_per_second / 1e6, retransmits: j.end.sum_sent.retransmits ?? 0 };
      }
      if (attempt >= 10 || !/refused/i.test(res.stdout + res.stderr)) throw new Error(`iperf3 failed: ${(res.stdout + res.stderr).slice(-500)}`);
    }
  } finally {
    await server;
  }
}

async function pingRtt(from: BenchNode, to: BenchNode): Promise<number | null> {
  const res = await run(['ping', '-n', '-q', '-c', '20', '-i', '0.05', '-W', '1', to.podIp], { netns: from.podNs, allowFail: true });
  const m = /= [\d.]+\/([\d.]+)\//.exec(res.stdout);
  return m ? Number(m[1]) : null;
}

async function reachable(from: BenchNode, to: BenchNode): Promise<boolean> {
  for (let i = 0; i < 20; i++) {
    const res = await run(['ping', '-n', '-q', '-c', '1', '-W', '1', to.podIp], { netns: from.podNs, allowFail: true });
    if (res.code === 0) return true;
    await sleep(200);
  }
  return false;
}

/** One round into `m` (the RTT with its first round). */
async function measureRound(m: Measurement, a: BenchNode, b: BenchNode, args: Args, cpuOf?: () => number): Promise<void> {
  if (!(await reachable(a, b))) throw new Error(`${m.label}: pod ${a.podIp} cannot reach ${b.podIp}`);
  if (m.mbits.length === 0) m.rttMs = await pingRtt(a, b);
  const cpu0 = cpuOf?.() ?? 0;
  const res = await iperf(a, b, args.seconds);
  if (cpuOf) m.cpu.push((cpuOf() - cpu0) / args.seconds);
  m.mbits.push(res.mbits);
  m.retransmits.push(res.retransmits);
  process.stderr.write(`  ${m.label}: ${res.mbits.toFixed(0)} Mbit/s (${res.retransmits} retransmits)\n`);
}

async function measure(label: string, a: BenchNode, b: BenchNode, args: Args, cpuOf?: () => number): Promise<Measurement> {
  const m: Measurement = { label, mbits: [], retransmits: [], rttMs: null, cpu: [] };
  for (let r = 0; r < args.rounds; r++) await measureRound(m, a, b, args, cpuOf);
  return m;
}

async function setPodMtu(n: BenchNode, mtu: number): Promise<void> {
  await ipBatch([['link', 'set', n.podPort, 'mtu', String(mtu)], ['link', 'set', 'cni0', 'mtu', String(mtu)]], { netns: n.ns });
  await ipBatch([['link', 'set', 'eth0', 'mtu', String(mtu)]], { netns: n.podNs });
}

/** Kernel VXLAN exactly as upstream's vxlan backend programs it (flannel.1, VNI 1, port 8472). */
async function kernelVxlan(nodes: BenchNode[]): Promise<void> {
  const macs = nodes.map((_, i) => `0e:00:00:00:00:${(i + 1).toString(16).padStart(2, '0')}`);
  for (const [i, n] of nodes.entries()) {
    await setPodMtu(n, 1450);
    const cmds: string[][] = [
      ['link', 'add', 'flannel.1', 'address', macs[i]!, 'mtu', '1450', 'type', 'vxlan', 'id', '1', 'local', n.ip, 'dev', 'eth0', 'dstport', '8472', 'nolearning'],
      ['addr', 'add', `${formatIp4(n.subnet.ip)}/32`, 'dev', 'flannel.1'],
      ['link', 'set', 'flannel.1', 'up'],
    ];
    for (const [j, p] of nodes.entries()) {
      if (j === i) continue;
      const gw = formatIp4(p.subnet.ip);
      cmds.push(['neigh', 'replace', gw, 'lladdr', macs[j]!, 'dev', 'flannel.1', 'nud', 'permanent']);
      cmds.push(['route', 'replace', p.subnet.toString(), 'via', gw, 'dev', 'flannel.1', 'onlink']);
    }
    await ipBatch(cmds, { netns: n.ns });
    for (const [j, p] of nodes.entries()) {
      if (j !== i) await run(['bridge', 'fdb', 'append', macs[j]!, 'dev', 'flannel.1', 'dst', p.ip, 'self', 'permanent'], { netns: n.ns });
    }
  }
}

const STEPS: { label: string; opts: Partial<UdpForwarderOptions> }[] = [
  {
    label: 'one packet per syscall, default socket buffers (upstream design)',
    opts: { batch: false, tunOffload: false, udpGso: false, udpGro: false, tunCoalesce: false, socketBufferBytes: 212992 },
  },
  { label: '+ 4 MiB socket buffers', opts: { batch: false, tunOffload: false, udpGso: false, udpGro: false, tunCoalesce: false } },
  { label: '+ batching (recvmmsg/sendmmsg)', opts: { tunOffload: false, udpGso: false, udpGro: false, tunCoalesce: false } },
  { label: '+ TUN TSO (split super-packets ourselves)', opts: { udpGso: false, udpGro: false, tunCoalesce: false } },
  { label: '+ UDP GSO (UDP_SEGMENT)', opts: { udpGro: false, tunCoalesce: false } },
  { label: '+ UDP GRO', opts: { tunCoalesce: false } },
  { label: '+ TCP coalescing into TUN writes (all on)', opts: {} },
  // Ablations: all on except one, to see what each still brings once the others are there.
  { label: 'all on except UDP GSO', opts: { udpGso: false } },
  { label: 'all on except UDP GRO', opts: { udpGro: false } },
];

/** The rows of the in-process mode. */
function inProcessRows(args: Args): { label: string; opts: Partial<UdpForwarderOptions> }[] {
  const workers = `${args.workers} worker${args.workers > 1 ? 's' : ''}`;
  if (args.steps) return [...STEPS, { label: `all on, ${Math.max(2, args.workers)} workers (multi-queue TUN)`, opts: { workers: Math.max(2, args.workers) } }];
  if (args.sourceCheck) {
    return [
      { label: `udp data path (${workers}), AllowedIPs check on (as shipped)`, opts: { workers: args.workers } },
      { label: `udp data path (${workers}), AllowedIPs check off`, opts: { workers: args.workers, innerSourceCheck: false } },
    ];
  }
  return [{ label: `udp backend data path (${workers})`, opts: { workers: args.workers } }];
}

async function runInProcess(args: Args): Promise<Measurement[]> {
  const topo: Topology = await createTopology({ nodes: 2, podMtu: 1472, prefix: 'udpb' });
  const nodes: BenchNode[] = topo.nodes.map((n) => ({ ns: n.ns, ip: n.ip, subnet: n.subnet, podNs: n.pod.ns, podIp: n.pod.ip, podPort: 'vp1' }));
  const rows = inProcessRows(args);
  const results: Measurement[] = rows.map((row) => ({ label: row.label, mbits: [], retransmits: [], rttMs: null, cpu: [] }));
  const cpu = (): number => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1e6;
  };
  try {
    for (let round = 0; round < args.rounds; round++) {
      for (const [i, row] of rows.entries()) {
        const fwds: UdpForwarder[] = [];
        try {
          for (const n of topo.nodes) {
            fwds.push(new UdpForwarder({ tunName: 'flannel0', mtu: 1472, bindAddress: parseIp4(n.ip), port: 8285, netns: n.ns, ...row.opts }));
            await addressFlannel0(n);
          }
          topo.nodes.forEach((n, j) => {
            const peer = topo.nodes[1 - j]!;
            fwds[j]!.setTable({ own: n.subnet, icmpSource: OVERLAY.ip, routes: [{ subnet: peer.subnet, peer: parseIp4(peer.ip), port: 8285 }] });
          });
          await measureRound(results[i]!, nodes[0]!, nodes[1]!, args, cpu);
          // Real traffic, with or without the AllowedIPs check: none of it may be refused as spoofed.
          for (const f of fwds) {
            const refused = f.stats().dropSpoofedSource;
            if (refused !== 0) throw new Error(`${row.label}: ${refused} real packets refused as spoofed`);
          }
        } finally {
          for (const f of fwds) f.close(); // removes flannel0 and its route
        }
      }
    }
    await kernelVxlan(nodes);
    results.push(await measure('kernel VXLAN by hand, MTU 1450', nodes[0]!, nodes[1]!, args));
  } finally {
    await topo.destroy();
  }
  return results;
}

async function runDaemons(args: Args): Promise<Measurement[]> {
  const cluster: Cluster = await createCluster({ nodes: 2, config: { Network: OVERLAY.toString(), Backend: { Type: 'udp' } } });
  const results: Measurement[] = [];
  try {
    const nodes: BenchNode[] = [];
    for (const n of cluster.nodes) {
      const env = await n.env();
      const pod = n.pods[0]!;
      nodes.push({ ns: n.ns, ip: n.ip, subnet: Ip4Net.parse(env['FLANNEL_SUBNET']!, true), podNs: pod.ns, podIp: pod.ip, podPort: 'vp1' });
    }
    results.push(await measure('flanneld (this project), udp backend', nodes[0]!, nodes[1]!, args));
    for (const n of cluster.nodes) await cluster.stopDaemon(n); // flannel0 goes with the process
    await kernelVxlan(nodes);
    results.push(await measure('kernel VXLAN by hand, MTU 1450', nodes[0]!, nodes[1]!, args));
  } finally {
    await cluster.destroy();
  }
  return results;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Each row's rounds, and the kernel VXLAN reference's, as lines over the round number. */
function plot(results: Measurement[], args: Args, file: string): void {
  const svg = lineChart({
    title: `udp data path vs kernel VXLAN, iperf3 pod -> pod, ${args.seconds} s rounds`,
    xLabel: 'round',
    yLabel: 'Mbit/s',
    xScale: 'linear',
    series: results.map((m, i) => ({
      name: m.label.replace(/ \(as shipped\)$/, '').replace(/^udp data path \(1 worker\), /, 'udp, '),
      points: m.mbits.map((y, r) => ({ x: r + 1, y: Math.round(y) })),
      dashed: i === results.length - 1,
    })),
  }, 900);
  writeFileSync(file, svg);
  console.log(`wrote ${file}`);
}

function report(results: Measurement[], args: Args): void {
  const vxlan = results[results.length - 1]!;
  const ref = median(vxlan.mbits);
  const fmt = (n: number): string => n.toFixed(0).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  console.log(`\niperf3 TCP pod -> pod, ${args.rounds} x ${args.seconds} s per row, same run (${new Date().toISOString()})`);
  console.log('| path | Mbit/s median | range | retransmits | ratio vs kernel VXLAN | ping RTT | forwarder CPU | CPU per Gbit/s |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const m of results) {
    const med = median(m.mbits);
    const range = `${fmt(Math.min(...m.mbits))} – ${fmt(Math.max(...m.mbits))}`;
    const cpu = m.cpu.length ? `${(median(m.cpu) * 100).toFixed(0)} %` : '';
    // CPU seconds per second of transfer, per Gbit/s moved: the forwarders' cost per byte, a second
    // view of a cost that throughput alone shows only through the machine's noise.
    const perGbit = m.cpu.length ? `${(median(m.cpu.map((c, i) => (c * 100) / (m.mbits[i]! / 1000)))).toFixed(1)} %` : '';
    const rtt = m.rttMs === null ? 'n/a' : `${m.rttMs.toFixed(2)} ms`;
    console.log(`| ${m.label} | ${fmt(med)} | ${range} | ${m.retransmits.join(', ')} | ${(med / ref).toFixed(2)} | ${rtt} | ${cpu} | ${perGbit} |`);
  }
}

const args = parseArgs(process.argv.slice(2));
const results = args.daemon ? await runDaemons(args) : await runInProcess(args);
report(results, args);
if (args.plot) plot(results, args, args.plot);
