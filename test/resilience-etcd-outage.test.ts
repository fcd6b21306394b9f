// etcd outages on namespace clusters: etcd stopped for 30 s (vxlan and udp), then two nodes cut off from
// etcd (tcp/2379 dropped in their namespaces) for 30 s while a node leaves and another joins; one
// comes back to a watch it can resume, the other to compacted history it must re-list. Pod traffic
// must not notice, each daemon must say so once, renew its lease when etcd is back, and end with
// kernel state that matches etcd. Needs `npm run build`.
import { afterAll, beforeAll, expect, test } from 'vitest';
import { createCluster, subnetOf, type Cluster, type ClusterNode, type Pod } from '../testbed/cluster.js';
import { hubEtcd, type HubEtcd } from './harness/etcd-cluster.js';
import { sleep, waitFor } from '../testbed/netns.js';
import {
  WARN, cutFromEtcd, freeSubnets, kernelVsEtcd, logSize, parseEtcdctlJson, readLog, report, startPing, vxlanTables, waitForLog,
} from './harness/resilience.js';

const OUTAGE_MS = 30_000;
const PREFIX = '/coreos.com/network';
// Renewals every 15 s (TTL 60 s, margin 45 s): at least one falls inside each 30 s outage, and the
// etcd lease still outlives a 30 s cut-off.
const DAEMON_ARGS = ['--subnet-lease-ttl=60', '--subnet-lease-renew-margin=0.75'];

let cluster: Cluster;
let etcd: HubEtcd;
let n1: ClusterNode, n2: ClusterNode, n3: ClusterNode, n4: ClusterNode;
let pod1: Pod, pod2: Pod;
// A two-node udp cluster of its own, put through the same etcd stop at the same time.
let udp: Cluster;
let udpEtcd: HubEtcd;

beforeAll(async () => {
  [cluster, udp] = await Promise.all([
    createCluster({ nodes: 4, config: { Network: '198.19.0.0/16', Backend: { Type: 'vxlan' } }, startDaemons: false, daemonArgs: DAEMON_ARGS }),
    createCluster({ nodes: 2, config: { Network: '198.19.0.0/16', Backend: { Type: 'udp' } }, daemonArgs: DAEMON_ARGS }),
  ]);
  [n1, n2, n3, n4] = cluster.nodes as [ClusterNode, ClusterNode, ClusterNode, ClusterNode];
  // Node 4 joins later, during an outage.
  await Promise.all([n1, n2, n3].map((n) => cluster.startDaemon(n)));
  pod1 = await cluster.addPod(n1);
  pod2 = await cluster.addPod(n2);
  await cluster.addPod(n3);
  expect(await waitFor(() => cluster.ping(pod1, pod2.ip, { timeoutS: 1 }), 10_000, 0)).toBe(true);
  expect(await waitFor(() => udp.ping(udp.nodes[0]!.pods[0]!, udp.nodes[1]!.pods[0]!.ip, { timeoutS: 1 }), 10_000, 0)).toBe(true);
  [etcd, udpEtcd] = await Promise.all([hubEtcd(cluster), hubEtcd(udp)]);
}, 120_000);

afterAll(async () => {
  await etcd?.stopRestarted();
  await udpEtcd?.stopRestarted();
  await cluster?.destroy();
  await udp?.destroy();
});

test('etcd stopped for 30 s (vxlan and udp at once): pod traffic flows, the outage is logged once, the lease is renewed when etcd returns', async () => {
  const setups = [
    { backend: 'vxlan', c: cluster, etcd, node: n1, from: pod1, to: pod2 },
    { backend: 'udp', c: udp, etcd: udpEtcd, node: udp.nodes[0]!, from: udp.nodes[0]!.pods[0]!, to: udp.nodes[1]!.pods[0]! },
  ];
  const marks = setups.map((x) => logSize(x.node.logFile));
  const pings = setups.map((x) => startPing(x.from.ns, x.to.ip));
  await sleep(1000);
  const down = Date.now();
  await Promise.all(setups.map((x) => x.etcd.kill('SIGKILL')));
  await sleep(OUTAGE_MS);
  // Recovery times count from the moment etcd is started again (it serves before the harness's
  // health check returns).
  const up = Date.now();
  await Promise.all(setups.map((x) => x.etcd.restart()));
  for (const [i, x] of setups.entries()) {
    const reachable = await waitForLog(x.node.logFile, (l) => l.msg.startsWith('etcd is reachable again'), 30_000, marks[i]);
    const renewed = await waitForLog(x.node.logFile, (l) => l.msg === 'renewed our lease' && l.time > up, 30_000, marks[i]);
    const result = await pings[i]!.stop();
    const lines = readLog(x.node.logFile, marks[i]);
    const during = lines.filter((l) => l.time >= down && l.time <= up);
    const warnings = during.filter((l) => l.level >= WARN);
    const retries = during.filter((l) => /retrying/.test(l.msg) && l.level < WARN);
    report(`etcd stopped 30 s (${x.backend})`, {
      pingSent: result.sent, pingLost: result.lost, warningsDuringOutage: warnings.map((l) => l.msg), retriesLogged: retries.length,
      etcdReachableAfterMs: reachable ? reachable.time - up : null, renewedAfterMs: renewed ? renewed.time - up : null,
    });
    expect(result.received, x.backend).toBeGreaterThan(OUTAGE_MS / result.intervalMs / 2);
    expect(result.lost, x.backend).toBe(0);
    // One line says etcd is gone (however many retries), one says it is back.
    expect(warnings.filter((l) => l.msg.startsWith('etcd is unreachable')), x.backend).toHaveLength(1);
    expect(warnings.length, warnings.map((l) => l.msg).join(' | ')).toBeLessThanOrEqual(2);
    expect(retries.length, 'retries are logged at debug level').toBeGreaterThan(2);
    // A renewal fell inside the outage and failed quietly; probes backed off up to their cap.
    expect(during.some((l) => l.msg.startsWith('lease renewal failed')), x.backend).toBe(true);
    const probeDelays = during.filter((l) => l.msg === 'etcd still unreachable; retrying').map((l) => Number(l['retryInMs']));
    expect(probeDelays[0]).toBeLessThan(1000);
    // Capped at 2 s, each delay spread by the retry policy's jitter (±25 %).
    expect(Math.max(...probeDelays)).toBeGreaterThanOrEqual(2000 * 0.75);
    expect(Math.max(...probeDelays)).toBeLessThanOrEqual(2000 * 1.25);
    expect(reachable, x.c.logTail(x.node)).not.toBeNull();
    expect(renewed, x.c.logTail(x.node)).not.toBeNull();
    // The lease key survived and still carries the node's address.
    const values = parseEtcdctlJson(await x.c.etcdctl(['get', '--prefix', `${PREFIX}/subnets/`, '-w', 'json']));
    expect(values.get(String(await subnetOf(x.node))), x.backend).toContain('"PublicIP":"198.18.0.1"');
  }
  // The watch works again: a lease added now reaches the kernel.
  const [fresh] = freeSubnets(parseEtcdctlJson(await cluster.etcdctl(['get', '--prefix', `${PREFIX}/subnets/`, '-w', 'json'])), 1) as [string];
  const key = `${PREFIX}/subnets/${fresh.replace('/', '-')}`;
  const t0 = Date.now();
  await cluster.etcdctl(['put', key, JSON.stringify({ PublicIP: '198.18.0.99', BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: '02:00:00:00:99:01' } })]);
  expect(await waitFor(async () => (await vxlanTables(n1)).routes.has(fresh), 10_000)).toBe(true);
  report('etcd stopped 30 s (vxlan): change after recovery', { reachedKernelMs: Date.now() - t0 });
  await cluster.etcdctl(['del', key]);
  expect(await waitFor(async () => (await kernelVsEtcd(cluster, n1)) === '', 10_000)).toBe(true);
}, 150_000);

test('udp: SIGKILL and restart of the daemon keeps the subnet; the pod traffic interruption is measured', async () => {
  const [u1, u2] = udp.nodes as [ClusterNode, ClusterNode];
  const env = await u1.env();
  const ping = startPing(u1.pods[0]!.ns, u2.pods[0]!.ip);
  await sleep(1000);
  await udp.stopDaemon(u1, 'SIGKILL');
  const killed = Date.now();
  await sleep(1000);
  await udp.startDaemon(u1);
  const envMs = Date.now() - killed;
  const back = await waitFor(() => udp.ping(u1.pods[0]!, u2.pods[0]!.ip, { timeoutS: 1 }), 15_000, 0);
  await sleep(1000);
  const result = await ping.stop();
  report('SIGKILL + restart (udp)', { downMs: 1000, envFileAfterKillMs: envMs, pingSent: result.sent, pingLost: result.lost, longestGapMs: result.longestGapMs });
  expect(await u1.env()).toEqual(env);
  expect(back, udp.logTail(u1)).toBe(true);
  // The forwarder lives in the daemon: packets sent while it is down are lost (unlike vxlan).
  expect(result.received).toBeGreaterThan(20);
}, 60_000);

test('two nodes cut off from etcd for 30 s while a node leaves and another joins; one resumes its watch, the other re-lists after compaction', async () => {
  const marks = [logSize(n1.logFile), logSize(n2.logFile)];
  const ping = startPing(pod1.ns, pod2.ip);
  await sleep(1000);
  const cut = (node: ClusterNode, op: '-A' | '-D') => cutFromEtcd(node, op === '-A');
  const n3Subnet = String(await subnetOf(n3));
  await Promise.all([cut(n1, '-A'), cut(n2, '-A')]);
  const down = Date.now();
  let up1 = 0;
  let up2 = 0;
  try {
    await sleep(2000);
    // Node 3 leaves (its lease removed), node 4 joins: nodes 1 and 2 cannot see either happen.
    await cluster.stopDaemon(n3);
    await cluster.etcdctl(['del', `${PREFIX}/subnets/${n3Subnet.replace('/', '-')}`]);
    await cluster.startDaemon(n4);
    // And the config is broken and fixed again: node 1's config watch must replay both.
    await cluster.etcdctl(['put', `${PREFIX}/config`, JSON.stringify({ Network: 5, Backend: { Type: 'vxlan' } })]);
    await cluster.etcdctl(['put', `${PREFIX}/config`, JSON.stringify({ Network: '198.19.0.0/16', Backend: { Type: 'vxlan' } })]);
    await sleep(OUTAGE_MS - (Date.now() - down));
    // Node 1 comes back first: its watch resumes from its revision.
    await cut(n1, '-D');
    up1 = Date.now();
    await waitFor(async () => (await kernelVsEtcd(cluster, n1)) === '', 30_000, 200);
    // Then history is compacted past what node 2 has seen: it must re-list.
    const rev = (JSON.parse(await cluster.etcdctl(['get', 'x', '-w', 'json'])) as { header: { revision: number } }).header.revision;
    await cluster.etcdctl(['compact', String(rev)]);
  } finally {
    await cut(n1, '-D').catch(() => undefined);
    await cut(n2, '-D');
    up2 = Date.now();
  }
  const converged = await Promise.all([n1, n2].map((n) => waitFor(async () => (await kernelVsEtcd(cluster, n)) === '', 30_000, 200)));
  const convergedMs = [Date.now() - up1, Date.now() - up2];
  const renewed = await Promise.all([n1, n2].map((n, i) =>
    waitForLog(n.logFile, (l) => l.msg === 'renewed our lease' && l.time > (i === 0 ? up1 : up2), 30_000, marks[i])));
  const result = await ping.stop();

  const n4Subnet = String(await subnetOf(n4));
  const logs = [n1, n2].map((n, i) => readLog(n.logFile, marks[i]));
  const warnings = logs.map((lines) => lines.filter((l) => l.level >= WARN));
  report('two nodes cut off from etcd 30 s (vxlan)', {
    pingSent: result.sent, pingLost: result.lost,
    node1: { path: 'watch resumed', warnings: warnings[0]!.map((l) => l.msg), kernelMatchesEtcdAfterMs: converged[0] ? convergedMs[0] : null, renewedAfterMs: renewed[0] ? renewed[0].time - up1 : null },
    node2: { path: 're-list after compaction', warnings: warnings[1]!.map((l) => l.msg), kernelMatchesEtcdAfterMs: converged[1] ? convergedMs[1] : null, renewedAfterMs: renewed[1] ? renewed[1].time - up2 : null },
  });
  expect(result.received).toBeGreaterThan(OUTAGE_MS / result.intervalMs / 2);
  expect(result.lost).toBe(0);
  for (const [i, n] of [n1, n2].entries()) {
    expect(converged[i], `node ${n.index} vs etcd: ${await kernelVsEtcd(cluster, n)}\n${cluster.logTail(n)}`).toBe(true);
    const tables = await vxlanTables(n);
    expect(tables.routes.has(n3Subnet)).toBe(false);
    expect(tables.routes.has(n4Subnet)).toBe(true);
    expect(renewed[i], cluster.logTail(n)).not.toBeNull();
    expect(warnings[i]!.filter((l) => l.msg.startsWith('etcd is unreachable'))).toHaveLength(1);
    // A renewal fell inside the cut and failed (quietly), and was retried.
    expect(logs[i]!.some((l) => l.msg.startsWith('lease renewal failed') && l.time > down && l.time < up1)).toBe(true);
  }
  // Node 1 resumed its watches; node 2's could not resume (compacted) and re-listed.
  expect(logs[0]!.some((l) => /watch resumed/.test(l.msg))).toBe(true);
  expect(logs[0]!.some((l) => l['field'] === 'Network' && l.time >= up1), 'the config change made during the cut').toBe(true);
  expect(logs[0]!.some((l) => /watch reset/.test(l.msg))).toBe(false);
  expect(logs[1]!.some((l) => /watch reset; re-listing/.test(l.msg))).toBe(true);
  expect(warnings[0]!.length, warnings[0]!.map((l) => l.msg).join(' | ')).toBeLessThanOrEqual(3);
  expect(warnings[1]!.length, warnings[1]!.map((l) => l.msg).join(' | ')).toBeLessThanOrEqual(3);
  // The newcomer is reachable from both.
  const pod4 = await cluster.addPod(n4);
  expect(await waitFor(() => cluster.ping(pod1, pod4.ip, { timeoutS: 1 }), 10_000, 0)).toBe(true);
  expect(await waitFor(() => cluster.ping(pod2, pod4.ip, { timeoutS: 1 }), 10_000, 0)).toBe(true);
}, 150_000);
