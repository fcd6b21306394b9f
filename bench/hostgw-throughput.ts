// host-gw backend throughput, against raw veth measured in the same run on the same machine.
//   flanneld: a 2-node dual-stack host-gw cluster (real bin/flanneld daemons); iperf3 TCP pod -> pod over
//             IPv4 and over IPv6: pod veth -> cni0 -> node routing -> underlay veth -> hub bridge -> the
//             other node, the route to the peer's subnet being the one flanneld programmed.
//   raw veth: two namespaces joined by one veth pair (MTU 1500), nothing else: the ceiling of any path.
//   by hand:  the same cluster with the daemons stopped and their routes replaced by the same routes
//             added by hand: what the topology itself costs, so flanneld's share can be told apart.
// Rounds alternate the set-ups so that drift in the machine's load hits all alike. Ratios = ours / raw
// and ours / by hand.
// Run: npm run bench:hostgw [-- --seconds=8 --rounds=3]
import { ipBatch } from '../src/routes/ip.js';
import { Ip4Net } from '../src/common/ip4.js';
import { Ip6Net } from '../src/common/ip6.js';
import { createCluster, type Cluster, type ClusterNode } from '../testbed/cluster.js';
import { iperfMbps } from '../testbed/iperf.js';
import { addNetns, delNetns, run, runId, waitFor } from '../testbed/netns.js';

const arg = (name: string, fallback: number): number => {
  const hit = process.argv.find((a) => a.startsWith(`--${name}=`));
  return hit ? Number(hit.split('=')[1]) : fallback;
};
const SECONDS = arg('seconds', 8);
const ROUNDS = arg('rounds', 3);
const CONFIG = { Network: '198.19.0.0/16', EnableIPv6: true, IPv6Network: '2001:2:1::/48', Backend: { Type: 'host-gw' } };

let cluster: Cluster | null = null;
const rawNs: string[] = [];
async function cleanup(): Promise<void> {
  for (const ns of rawNs.splice(0)) await delNetns(ns);
  await cluster?.destroy();
}
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    console.error(`\n${signal}: removing the bench namespaces`);
    void cleanup().finally(() => process.exit(130));
  });
}

const reachable = (ns: string, dst: string): Promise<boolean> =>
  waitFor(() => run(['ping', '-n', '-c', '1', '-w', '2', dst], { netns: ns, allowFail: true }).then((r) => r.code === 0), 15_000, 0);

const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;

/** Stops the daemons, removes their routes and adds the same ones by hand (one per peer and family). */
async function routesByHand(c: Cluster): Promise<void> {
  const subnets = new Map<ClusterNode, { v4: string; v6: string }>();
  for (const node of c.nodes) {
    const env = await node.env();
    subnets.set(node, { v4: Ip4Net.parse(env['FLANNEL_SUBNET']!, true).toString(), v6: Ip6Net.parse(env['FLANNEL_IPV6_SUBNET']!, true).toString() });
    await c.stopDaemon(node);
  }
  for (const me of c.nodes) {
    for (const peer of c.nodes.filter((n) => n !== me)) {
      const sn = subnets.get(peer)!;
      await ipBatch([['route', 'del', sn.v4], ['route', 'del', sn.v6]], { netns: me.ns });
      await ipBatch([['route', 'add', sn.v4, 'via', peer.ip, 'dev', 'eth0'], ['route', 'add', sn.v6, 'via', peer.ip6!, 'dev', 'eth0']], { netns: me.ns });
    }
  }
}

console.log(`host-gw throughput: 2 nodes, dual stack, iperf3 TCP pod -> pod, ${SECONDS} s per run, ${ROUNDS} rounds, against raw veth`);
try {
  cluster = await createCluster({ nodes: 2, ipv6: true, config: CONFIG });
  const [p1, p2] = [cluster.nodes[0]!.pods[0]!, cluster.nodes[1]!.pods[0]!];
  if (!(await reachable(p1.ns, p2.ip)) || !(await reachable(p1.ns, p2.ip6!))) throw new Error('pods cannot reach each other through flanneld host-gw');

  const id = runId();
  const [ra, rb] = [`hgwraw-${id}-a`, `hgwraw-${id}-b`];
  rawNs.push(ra, rb);
  await addNetns(ra);
  await addNetns(rb);
  await ipBatch([['link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', rb]], { netns: ra });
  for (const [ns, v4, v6] of [[ra, '198.19.250.1/24', '2001:2:1:fa::1/64'], [rb, '198.19.250.2/24', '2001:2:1:fa::2/64']] as const) {
    await ipBatch([['addr', 'add', v4, 'dev', 'eth0'], ['addr', 'add', v6, 'dev', 'eth0', 'nodad'], ['link', 'set', 'eth0', 'up']], { netns: ns });
  }
  if (!(await reachable(ra, '198.19.250.2')) || !(await reachable(ra, '2001:2:1:fa::2'))) throw new Error('raw veth pair does not answer');

  const results = { ours4: [] as number[], raw4: [] as number[], hand4: [] as number[], ours6: [] as number[], raw6: [] as number[], hand6: [] as number[] };
  const show = (label: string, v: number) => console.log(`  ${label.padEnd(28)} ${v.toFixed(0).padStart(7)} Mbit/s`);
  for (let round = 1; round <= ROUNDS; round++) {
    if (round > 1) for (const node of cluster.nodes) await cluster.startDaemon(node); // replaces the hand-made routes with its own
    if (!(await reachable(p1.ns, p2.ip)) || !(await reachable(p1.ns, p2.ip6!))) throw new Error('pods cannot reach each other through flanneld host-gw');
    results.ours4.push(await iperfMbps(p1.ns, p2.ns, p2.ip, SECONDS));
    show(`round ${round}: host-gw IPv4`, results.ours4.at(-1)!);
    results.raw4.push(await iperfMbps(ra, rb, '198.19.250.2', SECONDS));
    show(`round ${round}: raw veth IPv4`, results.raw4.at(-1)!);
    results.ours6.push(await iperfMbps(p1.ns, p2.ns, p2.ip6!, SECONDS));
    show(`round ${round}: host-gw IPv6`, results.ours6.at(-1)!);
    results.raw6.push(await iperfMbps(ra, rb, '2001:2:1:fa::2', SECONDS));
    show(`round ${round}: raw veth IPv6`, results.raw6.at(-1)!);
    await routesByHand(cluster);
    if (!(await reachable(p1.ns, p2.ip)) || !(await reachable(p1.ns, p2.ip6!))) throw new Error('pods cannot reach each other through the hand-made routes');
    results.hand4.push(await iperfMbps(p1.ns, p2.ns, p2.ip, SECONDS));
    show(`round ${round}: routes by hand IPv4`, results.hand4.at(-1)!);
    results.hand6.push(await iperfMbps(p1.ns, p2.ns, p2.ip6!, SECONDS));
    show(`round ${round}: routes by hand IPv6`, results.hand6.at(-1)!);
  }
  for (const fam of ['4', '6'] as const) {
    const ours = mean(results[`ours${fam}`]);
    const raw = mean(results[`raw${fam}`]);
    const hand = mean(results[`hand${fam}`]);
    const ratio = ours / raw;
    console.log(
      `  IPv${fam} mean: host-gw ${ours.toFixed(0)}, raw veth ${raw.toFixed(0)}, routes by hand ${hand.toFixed(0)} Mbit/s; ` +
        `host-gw / raw veth ${ratio.toFixed(3)} (target >= 0.95) ${ratio >= 0.95 ? 'MET' : 'NOT MET'}; host-gw / by hand ${(ours / hand).toFixed(3)}`,
    );
  }
} finally {
  await cleanup();
}
