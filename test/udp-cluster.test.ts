// Three real flanneld daemons with the udp backend, started at the same instant, sharing one etcd:
// full-mesh pod connectivity, upstream's lease format, a lease added and removed in etcd reaching
// the data path (checked on the wire at a fake node), garbage on port 8285 while pods ping, and
// datagrams from an address holding no lease. Needs `npm install && npm run build`.
import { afterAll, beforeAll, expect, test } from 'vitest';
import { ipJson } from '../src/routes/ip.js';
import { FUZZER, INNER_SENDER, UDP_COUNTER, kernelCounter, nodeScript as script, udpStatsFromMetrics } from '../testbed/udp-probes.js';
import { createCluster, nodeIdentityOf, unreachablePodPairs, type Cluster, type ClusterNode } from '../testbed/cluster.js';
import { addUnderlayHost, delNetns, run, waitFor } from '../testbed/netns.js';

const HEALTH_PORT = 9876;
let cluster: Cluster;
let outsiderNs = '';

beforeAll(async () => {
  cluster = await createCluster({
    nodes: 3,
    config: { Network: '198.19.0.0/16', Backend: { Type: 'udp' } },
    daemonArgs: ['--healthz-ip=127.0.0.1', `--healthz-port=${HEALTH_PORT}`],
  });
  // A host on the underlay (198.18.0.9) that holds no lease: it plays a fake node and an intruder.
  outsiderNs = await addUnderlayHost(cluster.hubNs, '198.18.0.9');
}, 90_000);

afterAll(async () => {
  if (outsiderNs) await delNetns(outsiderNs);
  await cluster?.destroy();
});

type BackendStats = Record<string, number>;

/** The udp forwarder's counters, read back from the Prometheus series /metrics shows them as. */
function backendStats(node: ClusterNode): Promise<BackendStats> {
  return udpStatsFromMetrics(node.ns, HEALTH_PORT);
}

// Listens on UDP argv[1] for argv[2] ms; prints one JSON line per datagram summary at the end:
// { count, packets: [{ len, version, totalLength, dst }] } (first 5 datagrams).
const UDP_CAPTURE = `
import dgram from 'node:dgram';
const s = dgram.createSocket('udp4'); const packets = []; let count = 0;
s.on('message', (m) => { count++; if (packets.length < 5) packets.push({ len: m.length, version: m[0] >> 4,
  totalLength: m.length >= 4 ? m.readUInt16BE(2) : -1, dst: m.length >= 20 ? [...m.subarray(16, 20)].join('.') : '' }); });
s.bind(Number(process.argv[1]), () => { console.log('ready'); setTimeout(() => { console.log(JSON.stringify({ count, packets })); s.close(); }, Number(process.argv[2])); });`;

test('three nodes started at the same instant: distinct subnets, udp leases as upstream writes them, every pod reaches every other', async () => {
  const envs = await Promise.all(cluster.nodes.map((n) => n.env()));
  expect(new Set(envs.map((e) => e['FLANNEL_SUBNET'])).size).toBe(3);
  for (const env of envs) expect(env['FLANNEL_MTU']).toBe('1472');
  const leases = (await cluster.etcdctl(['get', '--prefix', '/coreos.com/network/subnets/', '--print-value-only'])).trim().split('\n');
  expect(leases.map((v) => JSON.parse(v) as unknown).sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b)))).toEqual(
    // Upstream's value, plus the node's identity (a field upstream ignores).
    cluster.nodes.map((n) => ({ PublicIP: n.ip, PublicIPv6: null, NodeIdentity: nodeIdentityOf(n) })),
  );
  for (const node of cluster.nodes) {
    const [link] = await ipJson<{ mtu: number; flags: string[] }>(['link', 'show', 'dev', 'flannel0'], { netns: node.ns });
    expect(link?.mtu).toBe(1472);
    const routes = await ipJson<{ dst: string }>(['route', 'show', 'dev', 'flannel0'], { netns: node.ns });
    expect(routes.map((r) => r.dst)).toEqual(['198.19.0.0/16']);
  }
  // The leases of the others may still be arriving: each pair gets a few seconds to converge.
  expect(await unreachablePodPairs(cluster)).toEqual([]);
});

test('a lease added in etcd is forwarded to (one whole IP packet per datagram), a removed one is not', async () => {
  const pod = cluster.nodes[0]!.pods[0]!;
  const key = '/coreos.com/network/subnets/198.19.250.0-24';
  const capture = async (): Promise<{ count: number; packets: { len: number; version: number; totalLength: number; dst: string }[] }> => {
    const listener = script(outsiderNs, UDP_CAPTURE, ['8285', '2500']);
    await listener.ready;
    await run(['ping', '-n', '-c', '3', '-i', '0.2', '-W', '1', '198.19.250.5'], { netns: pod.ns, allowFail: true });
    return JSON.parse(await listener.done) as { count: number; packets: { len: number; version: number; totalLength: number; dst: string }[] };
  };
  // No lease: net unreachable from our data path, nothing on the wire.
  const before = await run(['ping', '-n', '-c', '1', '-W', '1', '198.19.250.5'], { netns: pod.ns, allowFail: true });
  expect(before.stdout).toMatch(/Destination Net Unreachable/);

  await cluster.etcdctl(['put', key, JSON.stringify({ PublicIP: '198.18.0.9', PublicIPv6: null })]);
  try {
    const converged = await waitFor(async () => (await backendStats(cluster.nodes[0]!))['leases'] === 3, 10_000);
    expect(converged).toBe(true);
    const seen = await capture();
    expect(seen.count).toBeGreaterThanOrEqual(3);
    for (const p of seen.packets) expect(p).toEqual({ len: 84, version: 4, totalLength: 84, dst: '198.19.250.5' }); // ping: 20 + 8 + 56
  } finally {
    await cluster.etcdctl(['del', key]);
  }
  const gone = await waitFor(async () => (await backendStats(cluster.nodes[0]!))['leases'] === 2, 10_000);
  expect(gone).toBe(true);
  expect((await capture()).count).toBe(0);
});

test('garbage on port 8285 for 3 s while pods ping: all of it dropped and counted by reason, pings unaffected, daemons alive', async () => {
  const [n1, n2, n3] = cluster.nodes as [ClusterNode, ClusterNode, ClusterNode];
  const before = await backendStats(n1);
  const overflowsBefore = await kernelCounter(n1.ns, 'UdpRcvbufErrors');
  const target = n1.pods[0]!.ip;
  const elsewhere = n2.pods[0]!.ip; // in another node's subnet: not for node 1
  // From a member's address (node 3) and from a stranger, at node 1, while node 2's pod pings node 1's.
  const fuzzers = [
    script(n3.ns, FUZZER, [n1.ip, target, '3000', n3.pods[0]!.ip, elsewhere]),
    script(outsiderNs, FUZZER, [n1.ip, target, '3000', '198.19.99.5', elsewhere]),
  ];
  const pings = await run(['ping', '-n', '-q', '-c', '100', '-i', '0.02', '-W', '2', target], { netns: n2.pods[0]!.ns, allowFail: true });
  const [fromMember, fromStranger] = (await Promise.all(fuzzers.map((f) => f.done))).map((out) => JSON.parse(out) as Record<string, number>) as [
    Record<string, number>,
    Record<string, number>,
  ];
  expect(pings.stdout).toMatch(/100 packets transmitted, (9[5-9]|100) received/);
  const after = await backendStats(n1);
  const d = (k: string): number => (after[k] ?? 0) - (before[k] ?? 0);
  const total = (sent: Record<string, number>): number => Object.values(sent).reduce((x, y) => x + y, 0);
  // Per reason a lower bound (random bytes land anywhere); in total exact, except for what the
  // kernel dropped on a full socket buffer before we could read it.
  expect(d('dropMalformedShort')).toBeGreaterThanOrEqual(fromMember['short']!);
  expect(d('dropMalformedVersion')).toBeGreaterThanOrEqual(fromMember['version']!);
  expect(d('dropMalformedHeader')).toBeGreaterThanOrEqual(fromMember['header']!);
  expect(d('dropMalformedLength')).toBeGreaterThanOrEqual(fromMember['length']!);
  expect(d('dropMalformedChecksum')).toBeGreaterThanOrEqual(fromMember['checksum']!);
  expect(d('dropTtlExpired')).toBeGreaterThanOrEqual(fromMember['ttl']!);
  expect(d('dropNotLocal')).toBeGreaterThanOrEqual(fromMember['notLocal']!);
  const overflows = (await kernelCounter(n1.ns, 'UdpRcvbufErrors')) - overflowsBefore;
  const byMember = ['dropMalformedShort', 'dropMalformedVersion', 'dropMalformedHeader', 'dropMalformedLength', 'dropMalformedChecksum', 'dropTtlExpired', 'dropNotLocal']
    .map(d)
    .reduce((x, y) => x + y, 0);
  expect(byMember).toBeLessThanOrEqual(total(fromMember));
  expect(d('dropUnknownSource')).toBeLessThanOrEqual(total(fromStranger));
  expect(byMember + d('dropUnknownSource')).toBeGreaterThanOrEqual(total(fromMember) + total(fromStranger) - overflows);
  expect(total(fromMember) + total(fromStranger)).toBeGreaterThan(1000);
  for (const node of cluster.nodes) expect(node.pid, `daemon on node ${node.index}`).not.toBeNull();
  expect(await cluster.ping(n2.pods[0]!, target)).toBe(true);
});

/** 20 UDP datagrams from `fromNs` to `node`'s port 8285, carrying packets from `src` to its pod; how many the pod got. */
async function deliverToPod(node: ClusterNode, fromNs: string, src: string): Promise<number> {
  const target = node.pods[0]!;
  const counter = script(target.ns, UDP_COUNTER, ['2500']);
  await counter.ready;
  await script(fromNs, INNER_SENDER, [node.ip, target.ip, src, '20']).done;
  return Number(await counter.done);
}

test('packets from an address that holds no lease never reach a pod; the same from a member do', async () => {
  const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
  const deliver = (ns: string, src: string): Promise<number> => deliverToPod(n1, ns, src);
  const before = await backendStats(n1);
  expect(await deliver(outsiderNs, '198.19.99.5')).toBe(0);
  expect((await backendStats(n1))['dropUnknownSource']! - before['dropUnknownSource']!).toBe(20);
  expect(await deliver(n2.ns, n2.pods[0]!.ip)).toBe(20);
});

test('a member speaking for addresses that are not its own (inner source outside its subnet) never reaches a pod: counted as spoofed_source', async () => {
  const [n1, n2, n3] = cluster.nodes as [ClusterNode, ClusterNode, ClusterNode];
  const deliver = (ns: string, src: string): Promise<number> => deliverToPod(n1, ns, src);
  // From node 2's address: an address of node 1's own subnet (another pod there), and node 3's pod.
  const env1 = await n1.env();
  const ownAddress = env1['FLANNEL_SUBNET']!.replace(/\.\d+\/\d+$/, '.3');
  const before = await backendStats(n1);
  expect(await deliver(n2.ns, ownAddress)).toBe(0);
  expect(await deliver(n2.ns, n3.pods[0]!.ip)).toBe(0);
  const spoofed = (await backendStats(n1))['dropSpoofedSource']! - before['dropSpoofedSource']!;
  expect(spoofed).toBe(40);
  // Node 2 for its own pod: delivered.
  expect(await deliver(n2.ns, n2.pods[0]!.ip)).toBe(20);
});
