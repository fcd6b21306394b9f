// vxlan backend figures, compared with a reference measured in the same run on the same topology.
//   1. Pod -> pod TCP throughput (iperf3) through flanneld's vxlan backend; then flanneld's state is
//      torn down and the same kernel VXLAN set up by hand; then flanneld again. Ratio = ours / hand.
//   2. Convergence: from a new node's daemon start until a pod on another node pings its pod (median).
// Run: npm run build && npx tsx bench/vxlan-throughput.ts [--seconds=8] [--rounds=2] [--samples=10]
import { rmSync } from 'node:fs';
import { bridgeBatch, ipBatch } from '../src/routes/ip.js';
import { readLink } from '../src/routes/link.js';
import { readRoutesWithin } from '../src/routes/route.js';
import { Ip4Net, formatIp4 } from '../src/common/ip4.js';
import { createCluster, type Cluster, type ClusterNode, type Pod } from '../testbed/cluster.js';
import { iperfMbps } from '../testbed/iperf.js';
import { run, sleep, waitFor } from '../testbed/netns.js';

const arg = (name: string, fallback: number): number => {
  const hit = process.argv.find((a) => a.startsWith(`--${name}=`));
  return hit ? Number(hit.split('=')[1]) : fallback;
};
const SECONDS = arg('seconds', 8);
const SAMPLES = arg('samples', 10);
const ROUNDS = arg('rounds', 2);
const CONFIG = { Network: '198.19.0.0/16', Backend: { Type: 'vxlan' } };

// Interrupted (Ctrl-C, timeout): remove the cluster being measured before exiting.
let current: Cluster | null = null;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    console.error(`\n${signal}: removing the bench cluster`);
    void (current?.destroy() ?? Promise.resolve()).finally(() => process.exit(130));
  });
}

const subnetOf = async (node: ClusterNode): Promise<Ip4Net> => Ip4Net.parse((await node.env())['FLANNEL_SUBNET']!, true);

async function reachable(from: Pod, to: Pod): Promise<boolean> {
  return waitFor(() => run(['ping', '-n', '-c', '1', '-w', '2', '-i', '0.05', to.ip], { netns: from.ns, allowFail: true }).then((r) => r.code === 0), 10_000, 0);
}

/** Stops flanneld and removes everything it programmed: the device (and with it its routes,
 *  neighbours and FDB) and its iptables rules. Pods and cni0 stay. */
async function tearDownFlannel(cluster: Cluster): Promise<void> {
  for (const node of cluster.nodes) {
    await cluster.stopDaemon(node);
    await ipBatch([['link', 'del', 'flannel.1']], { netns: node.ns });
    for (const table of ['filter', 'nat']) {
      await run(['iptables', '-t', table, '-F'], { netns: node.ns });
      await run(['iptables', '-t', table, '-X'], { netns: node.ns });
    }
  }
}

/** The same topology by hand: one VXLAN device per node, and per peer a route, an ARP and an FDB entry. */
async function setUpByHand(cluster: Cluster): Promise<void> {
  const info: { node: ClusterNode; subnet: Ip4Net; mac: string }[] = [];
  for (const node of cluster.nodes) {
    const subnet = await subnetOf(node);
    await ipBatch([
      ['link', 'add', 'vxhand', 'mtu', '1450', 'type', 'vxlan', 'id', '1', 'local', node.ip, 'dev', 'eth0', 'dstport', '8472', 'nolearning'],
      ['addr', 'add', `${formatIp4(subnet.ip)}/32`, 'dev', 'vxhand'],
      ['link', 'set', 'vxhand', 'up'],
    ], { netns: node.ns });
    info.push({ node, subnet, mac: (await readLink('vxhand', { netns: node.ns }))!.address });
  }
  for (const me of info) {
    for (const peer of info.filter((p) => p !== me)) {
      const gw = formatIp4(peer.subnet.ip);
      await bridgeBatch([['fdb', 'append', peer.mac, 'dev', 'vxhand', 'dst', peer.node.ip, 'self', 'permanent']], { netns: me.node.ns });
      await ipBatch([
        ['neigh', 'add', gw, 'lladdr', peer.mac, 'dev', 'vxhand', 'nud', 'permanent'],
        ['route', 'add', peer.subnet.toString(), 'via', gw, 'dev', 'vxhand', 'onlink'],
      ], { netns: me.node.ns });
    }
  }
}

async function throughput(): Promise<void> {
  const cluster = (current = await createCluster({ nodes: 2, config: CONFIG }));
  try {
    const [p1, p2] = [cluster.nodes[0]!.pods[0]!, cluster.nodes[1]!.pods[0]!];
    const ours: number[] = [];
    const hand: number[] = [];
    // Alternate the two set-ups so that drift in the machine's load hits both alike.
    for (let round = 1; round <= ROUNDS; round++) {
      if (round > 1) {
        for (const node of cluster.nodes) await ipBatch([['link', 'del', 'vxhand']], { netns: node.ns });
        for (const node of cluster.nodes) await cluster.startDaemon(node);
      }
      if (!(await reachable(p1, p2))) throw new Error('pods cannot reach each other through flanneld');
      ours.push(await iperfMbps(p1.ns, p2.ns, p2.ip, SECONDS));
      console.log(`  round ${round}: flanneld vxlan        ${ours.at(-1)!.toFixed(0).padStart(7)} Mbit/s`);

      await tearDownFlannel(cluster);
      await setUpByHand(cluster);
      if (!(await reachable(p1, p2))) throw new Error('pods cannot reach each other through the hand-made VXLAN');
      hand.push(await iperfMbps(p1.ns, p2.ns, p2.ip, SECONDS));
      console.log(`  round ${round}: kernel VXLAN by hand  ${hand.at(-1)!.toFixed(0).padStart(7)} Mbit/s`);
    }
    const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
    const ratio = mean(ours) / mean(hand);
    console.log(`  mean: flanneld ${mean(ours).toFixed(0)} Mbit/s, by hand ${mean(hand).toFixed(0)} Mbit/s`);
    console.log(`  ratio flanneld / by hand: ${ratio.toFixed(3)}   (target >= 0.95) ${ratio >= 0.95 ? 'MET' : 'NOT MET'}`);
  } finally {
    await cluster.destroy();
  }
}

/** A node joins as new (no lease, no device, no pod) and we time how soon node 1's pod reaches its pod. */
async function convergence(): Promise<void> {
  const cluster = (current = await createCluster({ nodes: 2, config: CONFIG }));
  try {
    const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
    const p1 = n1.pods[0]!;
    const toEnv: number[] = [];
    const toPing: number[] = [];
    for (let i = 0; i < SAMPLES; i++) {
      // Make node 2 brand new: no daemon, no lease, no kernel state, no pod; node 1 has forgotten it.
      const old = await subnetOf(n2);
      await cluster.stopDaemon(n2);
      await cluster.etcdctl(['del', `/coreos.com/network/subnets/${old.toKey()}`]);
      for (const pod of [...n2.pods]) await cluster.removePod(pod);
      await ipBatch([['link', 'del', 'flannel.1'], ['link', 'del', 'cni0']], { netns: n2.ns, force: true }).catch(() => {});
      rmSync(n2.subnetFile, { force: true });
      const forgotten = await waitFor(async () => (await readRoutesWithin(old, { netns: n1.ns })).length === 0, 10_000);
      if (!forgotten) throw new Error(`node 1 still routes ${old} after its lease was deleted`);
      await sleep(200);

      const t0 = performance.now();
      await cluster.startDaemon(n2);
      const tEnv = performance.now() - t0;
      const p2 = await cluster.addPod(n2);
      // One echo every 5 ms until the first reply.
      const res = await run(['ping', '-n', '-q', '-c', '1', '-i', '0.005', '-w', '10', p2.ip], { netns: p1.ns, allowFail: true });
      const tPing = performance.now() - t0;
      if (res.code !== 0) throw new Error(`sample ${i + 1}: no reply from ${p2.ip} within 10 s`);
      toEnv.push(tEnv);
      toPing.push(tPing);
      console.log(`  sample ${String(i + 1).padStart(2)}: env file after ${tEnv.toFixed(0).padStart(4)} ms, first reply after ${tPing.toFixed(0).padStart(4)} ms`);
    }
    const median = (xs: number[]): number => {
      const s = [...xs].sort((a, b) => a - b);
      const m = Math.floor(s.length / 2);
      return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
    };
    const med = median(toPing);
    console.log(`  median: env file ${median(toEnv).toFixed(0)} ms; daemon start -> first pod-to-pod reply ${med.toFixed(0)} ms (target < 1000 ms) ${med < 1000 ? 'MET' : 'NOT MET'}`);
    console.log('  (includes node start-up and making the pod: netns, veth, address, as a CNI plugin would)');
  } finally {
    await cluster.destroy();
  }
}

console.log(`vxlan throughput: 2 nodes, iperf3 TCP pod -> pod, ${SECONDS} s per run, ${ROUNDS} rounds`);
await throughput();
console.log(`\nvxlan convergence: new node's daemon start -> pod on another node pings its pod, ${SAMPLES} samples`);
await convergence();
