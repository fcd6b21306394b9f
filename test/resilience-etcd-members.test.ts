// A three-member etcd cluster (198.18.0.251-253 in the hub namespace): flanneld gets all three
// endpoints, but starts while it can reach only one of them, so its watches and connections are
// all there; that member is then killed. It must fail over without losing its lease
// (same key, same etcd lease, same subnet), keep renewing, and keep receiving lease changes; pod
// traffic must not notice. Needs `npm run build`.
import { afterAll, beforeAll, expect, test } from 'vitest';
import { createCluster, type Cluster, type ClusterNode, type Pod } from '../testbed/cluster.js';
import { etcdctlIn, spawnFlanneld, startEtcdMembers, type EtcdMembers, type FlanneldProcess } from './harness/etcd-cluster.js';
import { run, sleep, waitFor } from '../testbed/netns.js';
import { WARN, freeSubnets, logSize, parseEtcdctlJson, readLog, report, startPing, vxlanTables, waitForLog } from './harness/resilience.js';

const PREFIX = '/coreos.com/network';
const CONFIG = { Network: '198.19.0.0/16', Backend: { Type: 'vxlan' } };
const MEMBER_IPS = ['198.18.0.251', '198.18.0.252', '198.18.0.253'];
// Renewals every 5 s (TTL 20 s, margin 15 s), so several must succeed through the survivors.
const LEASE_ARGS = ['--subnet-lease-ttl=20', '--subnet-lease-renew-margin=0.25'];

let cluster: Cluster;
let etcd: EtcdMembers;
let n1: ClusterNode, n2: ClusterNode;
let pod1: Pod, pod2: Pod;
const daemons: FlanneldProcess[] = [];

/** Watch streams each member serves, from its /metrics. */
async function watchStreams(): Promise<number[]> {
  return Promise.all(MEMBER_IPS.map(async (ip) => {
    const res = await run(['curl', '-s', '--max-time', '3', `http://${ip}:2379/metrics`], { netns: cluster.hubNs, allowFail: true });
    const m = /^etcd_debugging_mvcc_watch_stream_total (\d+)/m.exec(res.stdout);
    return m ? Number(m[1]) : 0;
  }));
}

async function startNode(node: ClusterNode): Promise<void> {
  const before = node.subnetFile;
  daemons.push(spawnFlanneld(node, [`--etcd-endpoints=${etcd.endpoints.join(',')}`, ...LEASE_ARGS]));
  expect(await waitFor(async () => {
    try {
      return Boolean((await node.env())['FLANNEL_SUBNET']);
    } catch {
      return false;
    }
  }, 20_000), `${before}: ${cluster.logTail(node)}`).toBe(true);
}

/** The lease key of a node's subnet and the etcd lease ID bound to it. */
async function leaseOf(node: ClusterNode): Promise<{ key: string; leaseId: string }> {
  const [ip, len] = (await node.env())['FLANNEL_SUBNET']!.split('/');
  const o = ip!.split('.').map(Number);
  const key = `${PREFIX}/subnets/${o[0]}.${o[1]}.${o[2]}.${o[3]! - 1}-${len}`;
  const out = await etcd.etcdctl(['get', key, '-w', 'fields']);
  const m = /"Lease" : (\d+)/.exec(out);
  return { key, leaseId: m?.[1] ?? 'none' };
}

beforeAll(async () => {
  cluster = await createCluster({ nodes: 2, config: CONFIG, startDaemons: false });
  [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
  for (const ip of MEMBER_IPS) await run(['ip', '-n', cluster.hubNs, 'addr', 'add', `${ip}/24`, 'dev', 'br0']);
  etcd = await startEtcdMembers(cluster.hubNs, MEMBER_IPS);
  await etcd.etcdctl(['put', `${PREFIX}/config`, JSON.stringify(CONFIG)]);
  await startNode(n2);
  pod2 = await cluster.addPod(n2);
}, 90_000);

afterAll(async () => {
  for (const d of daemons) await d.stop('SIGKILL');
  await etcd?.stop();
  await cluster?.destroy();
});

/** Refuses (TCP reset) node 1's connections to the other members, so that it starts on `member`. */
async function pinTo(member: string, op: '-A' | '-D'): Promise<void> {
  for (const ip of MEMBER_IPS.filter((m) => m !== member)) {
    await run(['iptables', op, 'OUTPUT', '-p', 'tcp', '-d', ip, '--dport', '2379', '-j', 'REJECT', '--reject-with', 'tcp-reset'], { netns: n1.ns });
  }
}

test('the member serving our watches is killed: failover keeps the lease, renewals and the watch; traffic flows', async () => {
  // Node 1 starts while it can reach only the first member, so both its watches (and its other
  // connections) are there; then all three members are open to it again.
  const victim = 0;
  const streamsBefore = await watchStreams();
  await pinTo(MEMBER_IPS[victim]!, '-A');
  try {
    await startNode(n1);
    expect(await waitFor(async () => (await watchStreams())[victim]! >= streamsBefore[victim]! + 2, 10_000)).toBe(true);
  } finally {
    await pinTo(MEMBER_IPS[victim]!, '-D');
  }
  pod1 = await cluster.addPod(n1);
  expect(await waitFor(() => cluster.ping(pod1, pod2.ip, { timeoutS: 1 }), 10_000, 0)).toBe(true);
  const lease = await leaseOf(n1);
  const env = await n1.env();
  const [fresh] = freeSubnets(parseEtcdctlJson(await etcd.etcdctl(['get', '--prefix', `${PREFIX}/subnets/`, '-w', 'json'])), 1) as [string];

  const mark = logSize(n1.logFile);
  const ping = startPing(pod1.ns, pod2.ip);
  await sleep(500);
  const killed = Date.now();
  await etcd.members[victim]!.kill('SIGKILL');
  const resumed = await waitForLog(n1.logFile, (l) => /watch resumed/.test(l.msg), 20_000, mark);
  // A lease added after the failover must reach node 1's kernel through the new watch. (If the
  // victim was the leader, writes fail until the survivors have elected a new one.)
  const put = ['put', `${PREFIX}/subnets/${fresh.replace('/', '-')}`, JSON.stringify({ PublicIP: '198.18.0.80', BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: '02:00:00:00:80:01' } })];
  const survivors = etcd.endpoints.filter((_, i) => i !== victim);
  expect(await waitFor(() => etcdctlIn(cluster.hubNs, survivors, put).then(() => true, () => false), 20_000, 200)).toBe(true);
  const t0 = Date.now();
  const arrived = await waitFor(async () => (await vxlanTables(n1)).routes.has(fresh), 15_000);
  const arrivedMs = Date.now() - t0;
  // Two renewals through the surviving members.
  const renewedAfterKill = () => readLog(n1.logFile, mark).filter((l) => l.msg === 'renewed our lease' && l.time > killed).length;
  await waitFor(() => renewedAfterKill() >= 2, 20_000, 200);
  const result = await ping.stop();

  const lines = readLog(n1.logFile, mark);
  const renewals = lines.filter((l) => l.msg === 'renewed our lease' && l.time > killed);
  report('etcd member serving the watch killed (3 members, vxlan)', {
    killedMember: MEMBER_IPS[victim], watchResumedAfterMs: resumed ? resumed.time - killed : null, changeReachedKernelMs: arrived ? arrivedMs : null,
    renewalsAfterKill: renewals.length, pingSent: result.sent, pingLost: result.lost,
    warnings: lines.filter((l) => l.level >= WARN).map((l) => l.msg),
  });
  expect(resumed, cluster.logTail(n1)).not.toBeNull();
  expect(arrived, cluster.logTail(n1)).toBe(true);
  expect(renewals.length).toBeGreaterThanOrEqual(2);
  // Same key, same etcd lease (never re-claimed), same env file.
  expect(await leaseOf(n1)).toEqual(lease);
  expect(await n1.env()).toEqual(env);
  expect(lines.some((l) => /lease was lost|claimed a new subnet/.test(l.msg))).toBe(false);
  // Losing one member of three is a reconnect, not an outage: at most one warning, if electing a
  // new leader (when the victim led) took longer than the daemon's 3 s grace on a busy machine.
  expect(lines.filter((l) => l.level >= WARN).map((l) => l.msg).filter((m) => !m.startsWith('etcd is unreachable'))).toEqual([]);
  expect(lines.filter((l) => l.level >= WARN).length).toBeLessThanOrEqual(1);
  expect(lines.some((l) => /dropped and re-established|reachable again/.test(l.msg))).toBe(true);
  expect(result.received).toBeGreaterThan(20);
  expect(result.lost).toBe(0);
}, 90_000);
