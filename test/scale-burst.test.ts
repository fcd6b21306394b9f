// Bursts at scale against a real daemon (bin/flanneld in a namespace, real etcd, real kernel):
// 1,000 leases put concurrently — etcd delivers many per watch response — must all reach the
// kernel (vxlan) or the forwarding table (udp, checked on the wire), and one entry the kernel
// refuses must leave every other peer programmed. Needs `npm run build`.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { ipBatch } from '../src/routes/ip.js';
import { Ip4Net, formatIp4 } from '../src/common/ip4.js';
import { createCluster, type Cluster, type ClusterNode } from '../testbed/cluster.js';
import { addUnderlayHost, delNetns, waitFor } from '../testbed/netns.js';
import { diffTables, expectedVxlanTables, readLog, vxlanTables, WARN } from './harness/resilience.js';
import { nodeScript, udpStatsFromMetrics } from '../testbed/udp-probes.js';

const PREFIX = '/coreos.com/network';
const BURST = 1000;
const HEALTH_PORT = 9877;

/** Puts every [key, value] of argv[2] (a JSON file) at once through one etcd3 client: the watch gets them many per response. */
const CONCURRENT_PUTS = `
import { readFileSync } from 'node:fs';
import { Etcd3 } from 'etcd3';
const [endpoint, file] = process.argv.slice(1);
const items = JSON.parse(readFileSync(file, 'utf8'));
const client = new Etcd3({ hosts: endpoint });
await Promise.all(items.map(([k, v]) => client.put(k).value(v)));
client.close();
console.log(items.length);`;

async function putConcurrently(cluster: Cluster, items: [string, string][]): Promise<void> {
  const file = join(cluster.tmpDir, `burst-${Date.now()}.json`);
  writeFileSync(file, JSON.stringify(items));
  expect(await nodeScript(cluster.hubNs, CONCURRENT_PUTS, [cluster.etcdEndpoint, file], 60_000).done).toBe(String(items.length));
}

/** `count` /29 subnets of 198.19.0.0/16 from `first` on, skipping the node's own. */
function subnets(own: Ip4Net, count: number, first = 64): Ip4Net[] {
  const out: Ip4Net[] = [];
  for (let i = first; out.length < count; i++) {
    const net = new Ip4Net(Ip4Net.parse('198.19.0.0/16').ip + i * 8, 29);
    if (!net.overlaps(own)) out.push(net);
  }
  return out;
}

async function ownSubnet(node: ClusterNode): Promise<Ip4Net> {
  return Ip4Net.parse((await node.env())['FLANNEL_SUBNET']!, true);
}

const mac = (i: number): string => `02:5c:00:00:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`;

describe('vxlan', () => {
  let cluster: Cluster;
  let node: ClusterNode;

  beforeAll(async () => {
    cluster = await createCluster({ nodes: 1, podsPerNode: 0, config: { Network: '198.19.0.0/16', SubnetLen: 29, Backend: { Type: 'vxlan' } } });
    node = cluster.nodes[0]!;
  }, 90_000);

  afterAll(async () => {
    await cluster?.destroy();
  });

  test('1,000 leases put concurrently: every one reaches the kernel, and one refused route leaves all others programmed', async () => {
    const own = await ownSubnet(node);
    const nets = subnets(own, BURST);
    // The kernel refuses an onlink route whose next hop is one of the node's own addresses: give
    // the node the network address of one lease's subnet, as a stray local address would.
    const refused = nets[500]!;
    await ipBatch([['addr', 'add', `${formatIp4(refused.ip)}/32`, 'dev', 'lo']], { netns: node.ns });
    const leases = new Map<string, { publicIP: string; vtepMac: string }>();
    const items: [string, string][] = nets.map((net, i) => {
      const l = { publicIP: `198.18.0.${10 + (i % 240)}`, vtepMac: mac(i) };
      leases.set(net.toString(), l);
      const value = { PublicIP: l.publicIP, PublicIPv6: null, BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: l.vtepMac } };
      return [`${PREFIX}/subnets/${net.toKey()}`, JSON.stringify(value)];
    });
    await putConcurrently(cluster, items);

    // Everything but the one refused route, and nothing else.
    const want = expectedVxlanTables(leases);
    want.routes.delete(refused.toString());
    const diff = async (): Promise<string[]> => diffTables(await vxlanTables(node), want);
    expect(await waitFor(async () => (await diff()).length === 0, 30_000, 250), (await diff()).slice(0, 10).join('; ')).toBe(true);
    const warning = readLog(node.logFile).find((l) => l.level === WARN && l['subnet'] === refused.toString() && l['kind'] === 'route');
    expect(warning?.['error']).toMatch(/invalid gateway/i);

    // Once the stray address is gone the periodic reconcile retries and the route goes in.
    await ipBatch([['addr', 'del', `${formatIp4(refused.ip)}/32`, 'dev', 'lo']], { netns: node.ns });
    const all = expectedVxlanTables(leases);
    expect(await waitFor(async () => diffTables(await vxlanTables(node), all).length === 0, 20_000, 250)).toBe(true);

    // And they all leave at once.
    await cluster.etcdctl(['del', '--prefix', `${PREFIX}/subnets/198.19.`]).catch(() => '');
    const ownKey = `${PREFIX}/subnets/${own.toKey()}`;
    // Our own key went too: the daemon claims again; what matters is that no peer entry is left.
    expect(await waitFor(async () => {
      const t = await vxlanTables(node);
      return [...t.routes.keys()].every((dst) => !leases.has(dst)) && [...t.fdb.keys()].every((m) => !m.startsWith('02:5c:'));
    }, 30_000, 250)).toBe(true);
    expect(ownKey).toContain(own.toKey());
  }, 180_000);
});

describe('udp', () => {
  let cluster: Cluster;
  let node: ClusterNode;
  let outsiderNs = '';

  beforeAll(async () => {
    cluster = await createCluster({
      nodes: 1,
      podsPerNode: 0,
      config: { Network: '198.19.0.0/16', SubnetLen: 29, Backend: { Type: 'udp' } },
      daemonArgs: ['--healthz-ip=127.0.0.1', `--healthz-port=${HEALTH_PORT}`],
    });
    node = cluster.nodes[0]!;
    // Every fake lease's PublicIP: a host on the underlay that counts what the forwarder sends it.
    outsiderNs = await addUnderlayHost(cluster.hubNs, '198.18.0.9');
  }, 90_000);

  afterAll(async () => {
    if (outsiderNs) await delNetns(outsiderNs);
    await cluster?.destroy();
  });

  // Datagrams on port 8285 for argv[1] ms: prints the sorted distinct inner destinations as JSON.
  const CAPTURE = `
import dgram from 'node:dgram';
const s = dgram.createSocket('udp4'); const dsts = new Set();
s.on('message', (m) => { if (m.length >= 20) dsts.add([...m.subarray(16, 20)].join('.')); });
s.bind(8285, () => { console.log('ready'); setTimeout(() => { console.log(JSON.stringify([...dsts].sort())); s.close(); }, Number(process.argv[1])); });`;
  // One datagram to port 9999 of each address in argv[1] (JSON), one at a time.
  const SEND_EACH = `
import dgram from 'node:dgram';
const targets = JSON.parse(process.argv[1]); const s = dgram.createSocket('udp4');
for (const t of targets) await new Promise((r) => s.send(Buffer.from('x'), 9999, t, r));
s.close(); console.log(targets.length);`;

  test('1,000 leases put concurrently: the forwarder sends to every one of them', async () => {
    const own = await ownSubnet(node);
    const nets = subnets(own, BURST);
    const items: [string, string][] = nets.map((net) => [`${PREFIX}/subnets/${net.toKey()}`, JSON.stringify({ PublicIP: '198.18.0.9', PublicIPv6: null })]);
    await putConcurrently(cluster, items);
    const stats = (): Promise<Record<string, number>> => udpStatsFromMetrics(node.ns, HEALTH_PORT);
    expect(await waitFor(async () => (await stats())['leases'] === BURST, 30_000, 250)).toBe(true);
    // Swaps were coalesced: far fewer than one per lease.
    expect((await stats())['tableSwaps']).toBeLessThan(BURST / 2);

    // On the wire: a packet to a pod address in each subnet leaves as a datagram to 198.18.0.9.
    // UDP may lose a datagram on a busy machine, so unseen targets get up to two more rounds; a
    // packet without a route would be counted in dropNoRoute instead.
    const targets = nets.map((n) => formatIp4(n.ip + 1));
    const seen = new Set<string>();
    for (let round = 0; round < 3 && seen.size < targets.length; round++) {
      const missing = targets.filter((t) => !seen.has(t));
      const capture = nodeScript(outsiderNs, CAPTURE, ['5000']);
      await capture.ready;
      expect(await nodeScript(node.ns, SEND_EACH, [JSON.stringify(missing)]).done).toBe(String(missing.length));
      for (const dst of JSON.parse(await capture.done) as string[]) seen.add(dst);
    }
    const after = await stats();
    expect(targets.filter((t) => !seen.has(t)), JSON.stringify(after)).toEqual([]);
    expect(after['dropNoRoute']).toBe(0);
  }, 180_000);
});
