// vxlan in dual stack: three real flanneld daemons started at the same moment with EnableIPv6. Every pod
// pair pings over IPv4 and IPv6; the IPv6 device, its address and the per-peer route, neighbour and FDB
// entry are upstream's (shared/reference/upstream-wire-format.md), as is the lease value with
// BackendV6Data; a departing node's state goes on both families; deleted IPv6 entries come back.
// Needs `npm run build` (bin/flanneld runs dist/).
import { afterAll, beforeAll, expect, test } from 'vitest';
import { Ip6Net, formatIp6 } from '../src/common/ip6.js';
import { type Cluster, type ClusterNode, createCluster, dualSubnetsOf, nodeIdentityOf, unreachablePodPairs } from '../testbed/cluster.js';
import { run, waitFor } from '../testbed/netns.js';

const CONFIG = { Network: '198.19.0.0/16', EnableIPv6: true, IPv6Network: '2001:2:1::/48', Backend: { Type: 'vxlan' } };
let cluster: Cluster;

beforeAll(async () => {
  cluster = await createCluster({ nodes: 3, ipv6: true, config: CONFIG });
}, 120_000);

afterAll(async () => {
  await cluster?.destroy();
});

const subnetsOf = dualSubnetsOf;

const out = async (node: ClusterNode, argv: string[]): Promise<string> => (await run(argv, { netns: node.ns })).stdout;

/** What `node` has for a peer's IPv6 subnet on flannel-v6.1, as `ip` and `bridge` print it. */
async function v6State(node: ClusterNode, peer: Ip6Net): Promise<{ route: boolean; neigh: string | null; fdb: string[] }> {
  const gw = formatIp6(peer.ip);
  const routes = (await out(node, ['ip', '-6', 'route', 'show', 'dev', 'flannel-v6.1'])).split('\n');
  const neigh = (await out(node, ['ip', '-6', 'neigh', 'show', 'dev', 'flannel-v6.1'])).split('\n').find((l) => l.startsWith(`${gw} `)) ?? null;
  const mac = neigh ? /lladdr (\S+)/.exec(neigh)?.[1] ?? '' : '';
  const fdb = (await out(node, ['bridge', 'fdb', 'show', 'dev', 'flannel-v6.1'])).split('\n').filter((l) => mac && l.startsWith(`${mac} `));
  return { route: routes.some((l) => l.startsWith(`${peer} via ${gw} `)), neigh, fdb };
}

test('every pod reaches every other over IPv4 and IPv6; the env file has both subnets and the IPv4 device\'s MTU', async () => {
  const all = await Promise.all(cluster.nodes.map(subnetsOf));
  expect(new Set(all.map((s) => s.v6.toString())).size).toBe(3);
  for (const node of cluster.nodes) expect((await node.env())['FLANNEL_MTU']).toBe('1450');
  expect(await unreachablePodPairs(cluster, 15_000)).toEqual([]);
  expect(await unreachablePodPairs(cluster, 15_000, { family: 6 })).toEqual([]);
});

test('device, addresses, per-peer entries and lease value are upstream\'s', async () => {
  const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
  const s1 = await subnetsOf(n1);
  const s2 = await subnetsOf(n2);
  const link = await out(n1, ['ip', '-d', 'link', 'show', 'dev', 'flannel-v6.1']);
  expect(link).toMatch(/mtu 1430 /);
  expect(link).toMatch(/vxlan id 1 local 2001:2::1 dev eth0 .*dstport 8472 nolearning/);
  const mac6 = /link\/ether (\S+)/.exec(link)![1]!;
  expect(await out(n1, ['ip', '-6', 'addr', 'show', 'dev', 'flannel-v6.1', 'scope', 'global'])).toContain(`inet6 ${formatIp6(s1.v6.ip)}/128 `);
  const value = JSON.parse((await cluster.etcdctl(['get', `/coreos.com/network/subnets/${s1.v4.toKey()}&${s1.v6.toKey()}`, '--print-value-only'])).trim()) as Record<string, unknown>;
  // Upstream's fields in upstream's order, then the node's identity (a field upstream ignores).
  expect(Object.keys(value)).toEqual(['PublicIP', 'PublicIPv6', 'BackendType', 'BackendData', 'BackendV6Data', 'NodeIdentity']);
  expect(value['NodeIdentity']).toBe(nodeIdentityOf(n1));
  expect(value['PublicIPv6']).toBe('2001:2::1');
  expect(value['BackendV6Data']).toEqual({ VNI: 1, VtepMAC: mac6 });
  // Node 1's entries for node 2: route via the subnet's network address onlink, neighbour, FDB to PublicIPv6.
  const gw = formatIp6(s2.v6.ip);
  expect(await out(n1, ['ip', '-6', 'route', 'show', 'dev', 'flannel-v6.1'])).toContain(`${s2.v6} via ${gw} metric 1024 onlink`);
  const peerMac = (JSON.parse((await cluster.etcdctl(['get', `/coreos.com/network/subnets/${s2.v4.toKey()}&${s2.v6.toKey()}`, '--print-value-only'])).trim()) as { BackendV6Data: { VtepMAC: string } }).BackendV6Data.VtepMAC;
  expect(await out(n1, ['ip', '-6', 'neigh', 'show', 'dev', 'flannel-v6.1'])).toContain(`${gw} lladdr ${peerMac} PERMANENT`);
  expect(await out(n1, ['bridge', 'fdb', 'show', 'dev', 'flannel-v6.1'])).toContain(`${peerMac} dst 2001:2::2 self permanent`);
});

test('IPv6 entries deleted by hand come back at the next resync', async () => {
  const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
  const s2 = await subnetsOf(n2);
  await run(['ip', '-6', 'route', 'del', s2.v6.toString(), 'dev', 'flannel-v6.1'], { netns: n1.ns });
  await run(['ip', '-6', 'neigh', 'del', formatIp6(s2.v6.ip), 'dev', 'flannel-v6.1'], { netns: n1.ns });
  const back = await waitFor(async () => {
    const st = await v6State(n1, s2.v6);
    return st.route && st.neigh !== null && st.fdb.length === 1;
  }, 15_000, 200);
  expect(back, cluster.logTail(n1)).toBe(true);
});

test('a departing node\'s state disappears on both families', async () => {
  const leaving = cluster.nodes[2]!;
  const s = await subnetsOf(leaving);
  await cluster.stopDaemon(leaving);
  await cluster.etcdctl(['del', `/coreos.com/network/subnets/${s.v4.toKey()}&${s.v6.toKey()}`]);
  for (const node of cluster.nodes.slice(0, 2)) {
    const gone = await waitFor(async () => {
      const st = await v6State(node, s.v6);
      const r4 = await out(node, ['ip', '-4', 'route', 'show']);
      return !st.route && st.neigh === null && st.fdb.length === 0 && !r4.includes(s.v4.toString());
    }, 5000);
    expect(gone, `node ${node.index} still has state for ${s.v4} / ${s.v6}`).toBe(true);
  }
  const [p1, p2] = [cluster.nodes[0]!.pods[0]!, cluster.nodes[1]!.pods[0]!];
  expect(await cluster.ping(p1, p2.ip6!, { count: 2 })).toBe(true);
});

test('a restarted node keeps both subnets and its IPv6 VTEP MAC', async () => {
  const node = cluster.nodes[1]!;
  const before = await subnetsOf(node);
  const mac = /link\/ether (\S+)/.exec(await out(node, ['ip', 'link', 'show', 'dev', 'flannel-v6.1']))![1];
  await cluster.stopDaemon(node);
  await cluster.startDaemon(node);
  const after = await subnetsOf(node);
  expect([after.v4.toString(), after.v6.toString()]).toEqual([before.v4.toString(), before.v6.toString()]);
  expect(/link\/ether (\S+)/.exec(await out(node, ['ip', 'link', 'show', 'dev', 'flannel-v6.1']))![1]).toBe(mac);
  const [p1, p2] = [cluster.nodes[0]!.pods[0]!, node.pods[0]!];
  expect(await waitFor(() => cluster.ping(p1, p2.ip6!, { timeoutS: 1 }), 10_000, 0)).toBe(true);
});

test('the daemons logged no errors', () => {
  for (const node of cluster.nodes) {
    expect(cluster.errorsLogged(node), `node ${node.index}`).toEqual([]);
  }
});
