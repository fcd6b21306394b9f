// Three real flanneld daemons (vxlan backend) in network namespaces, sharing one etcd: full-mesh
// pod connectivity, a node leaving, and a node restarting. Needs `npm run build` (bin/flanneld runs dist/).
import { afterAll, beforeAll, expect, test } from 'vitest';
import { Ip4Net } from '../src/common/ip4.js';
import { sameNet } from '../src/routes/entries.js';
import { readFdb } from '../src/routes/fdb.js';
import { readNeighbours } from '../src/routes/neigh.js';
import { readRoutesWithin } from '../src/routes/route.js';
import { createCluster, unreachablePodPairs, type Cluster, type ClusterNode, subnetOf } from '../testbed/cluster.js';
import { run, waitFor } from '../testbed/netns.js';

let cluster: Cluster;

beforeAll(async () => {
  cluster = await createCluster({ nodes: 3, config: { Network: '198.19.0.0/16', Backend: { Type: 'vxlan' } } });
}, 90_000);

afterAll(async () => {
  await cluster?.destroy();
});

/** What `node` has programmed for `subnet`: route, neighbour and FDB entry. */
async function programmedFor(node: ClusterNode, subnet: Ip4Net): Promise<{ route: boolean; neigh: boolean; fdb: number }> {
  const opts = { netns: node.ns };
  const [routes, neighs, fdb] = await Promise.all([readRoutesWithin(subnet, opts), readNeighbours('flannel.1', opts), readFdb('flannel.1', opts)]);
  const neigh = neighs.find((n) => n.ip === subnet.ip && n.permanent);
  return {
    route: routes.some((r) => sameNet(r.dst, subnet)),
    neigh: neigh !== undefined,
    fdb: neigh ? fdb.filter((e) => e.mac === neigh.mac).length : 0,
  };
}

test('three nodes started at the same instant get distinct subnets and every pod reaches every other', async () => {
  const subnets = await Promise.all(cluster.nodes.map(subnetOf));
  expect(new Set(subnets.map(String)).size).toBe(3);
  for (const node of cluster.nodes) expect((await node.env())['FLANNEL_MTU']).toBe('1450');
  // The leases of the others may still be arriving: each pair gets a few seconds to converge.
  expect(await unreachablePodPairs(cluster)).toEqual([]);
});

test('a node that leaves disappears from the others within seconds', async () => {
  const leaving = cluster.nodes[2]!;
  const subnet = await subnetOf(leaving);
  await cluster.stopDaemon(leaving);
  await cluster.etcdctl(['del', `/coreos.com/network/subnets/${subnet.toString().replace('/', '-')}`]);
  for (const node of cluster.nodes.slice(0, 2)) {
    const gone = await waitFor(async () => {
      const p = await programmedFor(node, subnet);
      return !p.route && !p.neigh && p.fdb === 0;
    }, 5000);
    expect(gone, `node ${node.index} still has state for ${subnet}`).toBe(true);
  }
  // The two remaining nodes still reach each other.
  expect(await cluster.ping(cluster.nodes[0]!.pods[0]!, cluster.nodes[1]!.pods[0]!.ip, { count: 2 })).toBe(true);
});

test('the daemons logged no errors', () => {
  for (const node of cluster.nodes) {
    expect(cluster.errorsLogged(node), `node ${node.index}`).toEqual([]);
  }
});

test('a restarted node keeps its subnet and is reachable again', async () => {
  const node = cluster.nodes[1]!;
  const subnet = await subnetOf(node);
  await cluster.stopDaemon(node);
  await cluster.startDaemon(node);
  expect(String(await subnetOf(node))).toBe(String(subnet));
  const [p1, p2] = [cluster.nodes[0]!.pods[0]!, node.pods[0]!];
  expect(await waitFor(() => cluster.ping(p1, p2.ip, { timeoutS: 1 }), 10_000, 0)).toBe(true);
  expect(await waitFor(() => cluster.ping(p2, p1.ip, { timeoutS: 1 }), 10_000, 0)).toBe(true);
  const p = await programmedFor(cluster.nodes[0]!, subnet);
  expect(p).toEqual({ route: true, neigh: true, fdb: 1 });
});

test('a daemon that cannot start fails createCluster with its log tail, leaving nothing behind', async () => {
  const opts = { nodes: 1, config: { Network: '198.19.0.0/16', Backend: { Type: 'vxlan' } }, daemonArgs: ['--log-level=nosuchlevel'], daemonTimeoutMs: 10_000 };
  const err = await createCluster(opts).then(
    async (c) => {
      await c.destroy();
      return new Error('createCluster succeeded');
    },
    (e: unknown) => e as Error,
  );
  expect(err.message).toMatch(/node 1: flanneld exited before writing .*subnet\.env; log tail:/);
  expect(err.message).toMatch(/nosuchlevel/);
  const id = /^cluster ([0-9a-f]+) /.exec(err.message)![1]!;
  const namespaces = (await run(['ip', 'netns', 'list'])).stdout;
  expect(namespaces).not.toContain(`fl-${id}-`);
});
