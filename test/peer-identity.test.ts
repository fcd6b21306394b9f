// Peer identity on namespace clusters (real daemons, real etcd, real kernel): a well-formed lease that
// claims another node's VTEP MAC, and a second node started with another node's --public-ip.
//  - The rogue-MAC lease is refused on every node, the same on a node restarted afterwards: the FDB entry
//    for the victim's MAC stays at the victim's address (IPv4 and a dual-stack cluster's IPv6 side), and
//    every pod pair still pings.
//  - Of two nodes with one PublicIP the second takes no lease (and says why, naming the IP and the
//    holder), with at most a handful of etcd writes in 20 s; the first keeps its subnet, also across a
//    restart; a third node is unaffected; a lease with the PublicIP and no identity (what upstream
//    writes) is still its node's after an in-place swap.
// Needs `npm run build`.
import { existsSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { formatIp } from '../src/routes/entries.js';
import { type IpOptions } from '../src/routes/ip.js';
import { readFdb } from '../src/routes/fdb.js';
import { ipJson } from '../src/routes/ip.js';

/** A device's FDB entries with their destinations as text. */
const listFdb = async (dev: string, opts: IpOptions) => (await readFdb(dev, opts)).map((e) => ({ mac: e.mac, dst: formatIp(e.dst) }));
import { createCluster, dualSubnetsOf, nodeIdentityOf, subnetOf, unreachablePodPairs, type Cluster, type ClusterNode } from '../testbed/cluster.js';
import { spawnFlanneld, type FlanneldProcess } from './harness/etcd-cluster.js';
import { sleep, waitFor } from '../testbed/netns.js';
import {
  ERROR, WARN, freeSubnets, kernelVsEtcd, logSize, parseEtcdctlJson, readLog, report, vxlanTables, waitForLog,
} from './harness/resilience.js';

const PREFIX = '/coreos.com/network';

async function macOf(node: ClusterNode, device: string): Promise<string> {
  const [link] = await ipJson<{ address: string }>(['link', 'show', 'dev', device], { netns: node.ns });
  return link!.address.toLowerCase();
}

async function revision(cluster: Cluster): Promise<number> {
  return (JSON.parse(await cluster.etcdctl(['get', 'x', '-w', 'json'])) as { header: { revision: number } }).header.revision;
}

const identityOf = nodeIdentityOf;

async function leaseValues(cluster: Cluster): Promise<Map<string, string>> {
  return parseEtcdctlJson(await cluster.etcdctl(['get', '--prefix', `${PREFIX}/subnets/`, '-w', 'json']));
}

const DUP_MAC_WARNING = 'skipping a lease whose VTEP MAC belongs to another node';

describe('a lease with another node\'s VTEP MAC (vxlan, IPv4)', () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await createCluster({ nodes: 3, config: { Network: '198.19.0.0/16', Backend: { Type: 'vxlan' } } });
  }, 120_000);

  afterAll(async () => {
    await cluster?.destroy();
  });

  test('is refused on every node, also on one restarted afterwards: the victim\'s FDB entry stays at the victim, all pods ping', async () => {
    const [n1, n2, n3] = cluster.nodes as [ClusterNode, ClusterNode, ClusterNode];
    expect(await unreachablePodPairs(cluster, 15_000)).toEqual([]);
    const victimMac = await macOf(n2, 'flannel.1');
    const [rogue] = freeSubnets(await leaseValues(cluster), 1) as [string];
    const marks = cluster.nodes.map((n) => logSize(n.logFile));
    await cluster.etcdctl(['put', `${PREFIX}/subnets/${rogue.replace('/', '-')}`,
      JSON.stringify({ PublicIP: '198.18.0.77', PublicIPv6: null, BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: victimMac } })]);
    for (const [i, node] of cluster.nodes.entries()) {
      const line = await waitForLog(node.logFile, (l) => l.msg === DUP_MAC_WARNING && String(l['subnet']) === rogue, 10_000, marks[i]);
      expect(line, `node ${node.index}: ${cluster.logTail(node)}`).not.toBeNull();
      expect(line!['code']).toBe('duplicate_vtep_mac');
    }
    const check = async (node: ClusterNode): Promise<void> => {
      const tables = await vxlanTables(node);
      expect(tables.routes.has(rogue), `node ${node.index} routes the rogue subnet`).toBe(false);
      if (node !== n2) expect(tables.fdb.get(victimMac), `node ${node.index}`).toBe(n2.ip);
      else expect(tables.fdb.has(victimMac), 'node 2 has no FDB entry for its own MAC').toBe(false);
    };
    for (const node of cluster.nodes) await check(node);
    expect(await unreachablePodPairs(cluster, 10_000)).toEqual([]);

    // A node restarted now sees both leases in its first listing and decides the same.
    await cluster.stopDaemon(n3);
    await cluster.startDaemon(n3);
    expect(await waitFor(async () => (await vxlanTables(n3)).fdb.get(await macOf(n1, 'flannel.1')) === n1.ip, 10_000)).toBe(true);
    await check(n3);
    expect(await unreachablePodPairs(cluster, 10_000)).toEqual([]);
    // Said once per node, however often the lease is seen; the restarted node says it in its first
    // listing's summary.
    for (const [i, node] of cluster.nodes.entries()) {
      expect(readLog(node.logFile, marks[i]).filter((l) => l.msg === DUP_MAC_WARNING).length, `node ${node.index}`).toBe(1);
    }
    const summary = readLog(n3.logFile, marks[2]).filter((l) => l.level >= WARN && /skipping malformed or invalid leases/.test(l.msg));
    expect(summary.at(-1)?.['byReason']).toMatchObject({ duplicate_vtep_mac: 1 });
  }, 120_000);
});

describe('a lease with another node\'s IPv6 VTEP MAC (vxlan, dual stack)', () => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await createCluster({
      nodes: 3, ipv6: true, config: { Network: '198.19.0.0/16', EnableIPv6: true, IPv6Network: '2001:2:1::/48', Backend: { Type: 'vxlan' } },
    });
  }, 120_000);

  afterAll(async () => {
    await cluster?.destroy();
  });

  test('flannel-v6: the victim\'s FDB entry stays at the victim on every node, also after a restart; all pods ping over IPv6', async () => {
    const [n1, n2, n3] = cluster.nodes as [ClusterNode, ClusterNode, ClusterNode];
    expect(await unreachablePodPairs(cluster, 15_000, { family: 6 })).toEqual([]);
    const victimMac6 = await macOf(n2, 'flannel-v6.1');
    const taken = await Promise.all(cluster.nodes.map(dualSubnetsOf));
    const third = [...Array(200).keys()].map((k) => k + 20).find((k) => !taken.some((t) => t.v4.toString() === `198.19.${k}.0/24`))!;
    const key = `198.19.${third}.0-24&2001:2:1:${third.toString(16)}::-64`;
    const marks = cluster.nodes.map((n) => logSize(n.logFile));
    await cluster.etcdctl(['put', `${PREFIX}/subnets/${key}`, JSON.stringify({
      PublicIP: '198.18.0.77', PublicIPv6: '2001:2::77', BackendType: 'vxlan',
      BackendData: { VNI: 1, VtepMAC: '0e:77:00:00:00:01' }, BackendV6Data: { VNI: 1, VtepMAC: victimMac6 },
    })]);
    for (const [i, node] of cluster.nodes.entries()) {
      expect(await waitForLog(node.logFile, (l) => l.msg === DUP_MAC_WARNING, 10_000, marks[i]), `node ${node.index}`).not.toBeNull();
    }
    const check = async (node: ClusterNode): Promise<void> => {
      const fdb = await listFdb('flannel-v6.1', { netns: node.ns });
      const entries = fdb.filter((e) => e.mac === victimMac6).map((e) => e.dst);
      expect(entries, `node ${node.index}`).toEqual(node === n2 ? [] : [n2.ip6]);
      expect(fdb.some((e) => e.dst === '2001:2::77'), `node ${node.index} sends to the rogue address`).toBe(false);
    };
    for (const node of cluster.nodes) await check(node);
    await cluster.stopDaemon(n1);
    await cluster.startDaemon(n1);
    expect(await waitFor(async () => (await listFdb('flannel-v6.1', { netns: n1.ns })).some((e) => e.dst === n3.ip6), 10_000)).toBe(true);
    await check(n1);
    expect(await unreachablePodPairs(cluster, 10_000, { family: 6 })).toEqual([]);
  }, 120_000);
});

describe('two nodes with one --public-ip', () => {
  let cluster: Cluster;
  let second: FlanneldProcess | null = null;
  const SHARED_IP = '198.18.0.1';
  const WINDOW_MS = 20_000;

  beforeAll(async () => {
    cluster = await createCluster({ nodes: 3, config: { Network: '198.19.0.0/16', Backend: { Type: 'vxlan' } }, startDaemons: false });
    const [n1, , n3] = cluster.nodes as [ClusterNode, ClusterNode, ClusterNode];
    await Promise.all([cluster.startDaemon(n1, [`--public-ip=${SHARED_IP}`]), cluster.startDaemon(n3)]);
    await cluster.addPod(n1);
    await cluster.addPod(n3);
  }, 120_000);

  afterAll(async () => {
    await second?.stop('SIGKILL');
    await cluster?.destroy();
  });

  test('the second takes no lease, names the conflict, writes at most 10 times in 20 s; the first and a third node are unaffected', async () => {
    const [n1, n2, n3] = cluster.nodes as [ClusterNode, ClusterNode, ClusterNode];
    const n1Subnet = (await subnetOf(n1)).toString();
    const n1Env = readFileSync(n1.subnetFile, 'utf8');
    const before = await revision(cluster);
    const started = Date.now();
    second = spawnFlanneld(n2, [`--etcd-endpoints=${cluster.etcdEndpoint}`, `--public-ip=${SHARED_IP}`]);
    // The whole window first, whatever happens in it: the write count is the figure.
    const leasesSeen = new Set<string>();
    while (Date.now() - started < WINDOW_MS) {
      for (const [cidr, value] of await leaseValues(cluster)) if (value.includes(`"PublicIP":"${SHARED_IP}"`)) leasesSeen.add(`${cidr} ${value}`);
      await sleep(500);
    }
    const writes = (await revision(cluster)) - before;
    const refusal = readLog(n2.logFile).find((l) => l.level >= ERROR && /public IP is in use by another node/.test(l.msg));
    report('two nodes with one --public-ip', { windowMs: Date.now() - started, etcdWrites: writes, leasesWithTheIpSeen: leasesSeen.size, refusal: refusal?.msg ?? null });
    expect(writes).toBeLessThanOrEqual(10);
    expect(second.exited(), cluster.logTail(n2)).toBe(false);
    expect(existsSync(n2.subnetFile), 'the second node wrote an env file').toBe(false);
    expect(refusal, cluster.logTail(n2)).toBeDefined();
    expect(refusal).toMatchObject({ publicIP: SHARED_IP, heldSubnet: n1Subnet, holderIdentity: identityOf(n1) });
    expect(String(refusal!['err'])).toMatch(/flannelctl lease delete/);
    // Only ever the first node's lease carried the address, with the first node's identity.
    expect([...leasesSeen].map((l) => l.split(' ')[0])).toEqual([n1Subnet]);
    expect([...leasesSeen].every((l) => l.includes(`"NodeIdentity":"${identityOf(n1)}"`))).toBe(true);
    expect(readFileSync(n1.subnetFile, 'utf8')).toBe(n1Env);
    expect(await waitFor(async () => (await kernelVsEtcd(cluster, n3)) === '', 5_000), await kernelVsEtcd(cluster, n3)).toBe(true);
    expect(await unreachablePodPairs(cluster, 10_000, { nodes: [n1, n3] })).toEqual([]);
  }, 90_000);

  test('the first node restarted with its own identity keeps its subnet, while the second still waits', async () => {
    const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode, ClusterNode];
    const subnet = (await subnetOf(n1)).toString();
    await cluster.stopDaemon(n1);
    await cluster.startDaemon(n1, [`--public-ip=${SHARED_IP}`]);
    expect((await subnetOf(n1)).toString()).toBe(subnet);
    expect(readLog(n1.logFile).some((l) => l.msg === 'reusing the lease that carries our public IP')).toBe(true);
    expect(existsSync(n2.subnetFile)).toBe(false);
    expect(second!.exited()).toBe(false);
  }, 60_000);

  test('a lease with the node\'s PublicIP and no identity (written by upstream flanneld) is still its own after an in-place swap', async () => {
    const n3 = cluster.nodes[2]!;
    const subnet = (await subnetOf(n3)).toString();
    const key = `${PREFIX}/subnets/${subnet.replace('/', '-')}`;
    await cluster.stopDaemon(n3);
    // What upstream's daemon on this node would have written: no NodeIdentity, same etcd lease.
    const value = JSON.parse((await cluster.etcdctl(['get', key, '--print-value-only'])).trim()) as Record<string, unknown>;
    delete value['NodeIdentity'];
    await cluster.etcdctl(['put', '--ignore-lease', key, JSON.stringify(value)]);
    await cluster.startDaemon(n3);
    expect((await subnetOf(n3)).toString()).toBe(subnet);
    expect((await leaseValues(cluster)).get(subnet)).toContain(`"NodeIdentity":"${identityOf(n3)}"`);
  }, 60_000);
});
