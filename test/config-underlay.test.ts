// A real daemon (bin/flanneld) given a Network that contains its own underlay address, then one that
// contains its etcd endpoint's: each is logged once as an invalid config naming the network and the
// address, nothing is created (no env file, no device, no lease), and the daemon proceeds as soon as
// the config is fixed. Needs `npm run build`.
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { HUB_IP, createCluster, type Cluster, type ClusterNode } from '../testbed/cluster.js';
import { spawnFlanneld, type FlanneldProcess } from './harness/etcd-cluster.js';
import { run, waitFor } from '../testbed/netns.js';
import { ERROR, readLog, waitForLog } from './harness/resilience.js';

const PREFIX = '/coreos.com/network';
const GOOD = { Network: '198.19.0.0/16', Backend: { Type: 'vxlan' } };

let cluster: Cluster;
let node: ClusterNode;
let daemon: FlanneldProcess | null = null;

beforeAll(async () => {
  cluster = await createCluster({ nodes: 1, config: { ...GOOD, Network: '198.18.0.0/15' }, startDaemons: false });
  node = cluster.nodes[0]!;
}, 60_000);

afterAll(async () => {
  await daemon?.stop('SIGKILL');
  await cluster?.destroy();
});

test('a Network containing the underlay address or the etcd endpoint is refused by name; the daemon waits, then proceeds once fixed', async () => {
  daemon = spawnFlanneld(node, [`--etcd-endpoints=${cluster.etcdEndpoint}`]);
  const own = await waitForLog(node.logFile, (l) => l.level >= ERROR && l['field'] === 'Network', 15_000);
  expect(own?.msg, cluster.logTail(node)).toBe('invalid network config; waiting for a fixed one');
  expect(own?.['reason']).toBe(`198.18.0.0/15 contains ${node.ip}, this node's underlay address (eth0): the node would route it into the overlay; choose a network that leaves the underlay and etcd outside`);

  // Only etcd's address (198.18.0.254) inside: node 1 is 198.18.0.1.
  await cluster.etcdctl(['put', `${PREFIX}/config`, JSON.stringify({ ...GOOD, Network: '198.18.0.128/25' })]);
  const etcd = await waitForLog(node.logFile, (l) => l.level >= ERROR && String(l['reason']).startsWith('198.18.0.128/25'), 15_000);
  expect(etcd?.['reason'], cluster.logTail(node)).toBe(
    `198.18.0.128/25 contains ${HUB_IP}, etcd endpoint ${cluster.etcdEndpoint}: the node would route it into the overlay; choose a network that leaves the underlay and etcd outside`,
  );

  // Waiting, not failing: alive, nothing created; one line per distinct problem.
  expect(daemon.exited()).toBe(false);
  expect(existsSync(node.subnetFile)).toBe(false);
  expect((await run(['ip', '-n', node.ns, 'link', 'show', 'flannel.1'], { allowFail: true })).code).not.toBe(0);
  expect((await cluster.etcdctl(['get', '--prefix', '--keys-only', `${PREFIX}/subnets/`])).trim()).toBe('');
  const refusals = readLog(node.logFile).filter((l) => l.level >= ERROR && l['field'] === 'Network');
  expect(refusals.length).toBe(2);

  await cluster.etcdctl(['put', `${PREFIX}/config`, JSON.stringify(GOOD)]);
  expect(await waitFor(() => existsSync(node.subnetFile), 15_000), cluster.logTail(node)).toBe(true);
  expect((await node.env())['FLANNEL_NETWORK']).toBe('198.19.0.0/16');
}, 60_000);
