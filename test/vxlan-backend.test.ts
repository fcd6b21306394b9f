// VxlanBackend driven directly (no daemon, no etcd leases) on harness nodes: the device it makes,
// the tables it programs, pods pinging through it, and its repairs of kernel state.
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { BackendContext } from '../src/backend/backend.js';
import { VxlanBackend } from '../src/backend/vxlan/vxlan-backend.js';
import { silentLogger } from '../src/common/log.js';
import { readAddrs } from '../src/routes/addr.js';
import { RTPROT_KERNEL, permanentFdb, permanentNeighbour, unicastRoute } from '../src/routes/entries.js';
import { fdbSetCommand, readFdb } from '../src/routes/fdb.js';
import { bridgeBatch, ip, ipBatch } from '../src/routes/ip.js';
import { readLink } from '../src/routes/link.js';
import { neighSetCommand, readNeighbours } from '../src/routes/neigh.js';
import { readRoutesWithin, routeSetCommand } from '../src/routes/route.js';
import { parseNetworkConfig, type VxlanBackendConfig } from '../src/subnet/config.js';
import { Ip4Net, parseIp4 } from '../src/common/ip4.js';
import { decodeLeaseAttrs, type Lease, type LeaseBackend, type LeaseEvent } from '../src/subnet/lease.js';
import { createCluster, type Cluster, type ClusterNode } from '../testbed/cluster.js';
import { added, removed } from './harness/leases.js';
import { waitFor } from '../testbed/netns.js';

const NETWORK = { Network: '198.19.0.0/16', Backend: { Type: 'vxlan' } };
let cluster: Cluster;
const backends: VxlanBackend[] = [];

function newBackend(node: ClusterNode, backend: Record<string, unknown> = NETWORK.Backend, resyncIntervalMs = 200): VxlanBackend {
  const network = parseNetworkConfig(JSON.stringify({ ...NETWORK, Backend: backend }));
  const ctx: BackendContext = { extIface: { name: 'eth0', ifaceIP: node.ip, publicIP: node.ip, mtu: 1500 }, network, log: silentLogger };
  const b = new VxlanBackend(ctx, network.backend as VxlanBackendConfig, { netns: node.ns, resyncIntervalMs });
  backends.push(b);
  return b;
}

function lease(subnet: string, publicIP: string, backend: LeaseBackend): Lease {
  return { subnet: Ip4Net.parse(subnet), attrs: { publicIP, publicIPv6: null, backend }, expiration: null };
}

/** The VTEP MAC a vxlan lease publishes. */
function macOf(l: Lease): string {
  if (l.attrs.backend.type !== 'vxlan') throw new Error('not a vxlan lease');
  return l.attrs.backend.vtep.mac;
}

/** Hands events over and waits until the kernel has them (handleLeaseEvents alone may return earlier). */
async function handle(b: VxlanBackend, events: LeaseEvent[]): Promise<void> {
  await b.handleLeaseEvents(events);
  await b.settled();
}

/** The IPv4 addresses on a device, as "a.b.c.d/len". */
async function addrs(node: ClusterNode, dev = 'flannel.1'): Promise<string[]> {
  return (await readAddrs(dev, { netns: node.ns }, 4)).map((a) => a.cidr);
}

function writeEnv(node: ClusterNode, subnet: string): void {
  const first = subnet.replace(/\.0\/24$/, '.1/24');
  writeFileSync(node.subnetFile, `FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_SUBNET=${first}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n`);
}

async function tables(node: ClusterNode, dev = 'flannel.1') {
  const opts = { netns: node.ns };
  const [routes, neighs, fdb] = await Promise.all([readRoutesWithin(Ip4Net.parse('198.19.0.0/16'), opts), readNeighbours(dev, opts), readFdb(dev, opts)]);
  return { routes: routes.filter((r) => r.protocol !== RTPROT_KERNEL), neighs: neighs.filter((n) => n.permanent), fdb };
}

/** A route as the reader returns it: with the protocol `ip route replace` (and our writers) record, and the default metric. */
const asRead = <T extends object>(r: T) => ({ ...r, protocol: 3, metric: 0 });
const a4 = parseIp4;

beforeAll(async () => {
  cluster = await createCluster({ nodes: 3, config: NETWORK, startDaemons: false });
});

afterAll(async () => {
  await Promise.all(backends.map((b) => b.close()));
  await cluster?.destroy();
});

describe('device', () => {
  test('flannel.1 has upstream attributes and its MAC is published', async () => {
    const node = cluster.nodes[2]!;
    const b = newBackend(node);
    const ann = await b.prepare();
    const link = await readLink('flannel.1', { netns: node.ns });
    expect(link?.vxlan).toEqual({ vni: 1, local: node.ip, dev: 'eth0', port: 8472, learning: false, gbp: false });
    expect(link?.mtu).toBe(1450);
    expect(ann).toEqual({ backend: { type: 'vxlan', vtep: { vni: 1, mac: link!.address }, vtepV6: null }, mtu: 1450 });
    await b.setOwnLease(lease('198.19.3.0/24', node.ip, ann.backend));
    expect(await addrs(node)).toEqual(['198.19.3.0/32']);
    expect((await readLink('flannel.1', { netns: node.ns }))?.up).toBe(true);
    // A new lease replaces the old address.
    await b.setOwnLease(lease('198.19.4.0/24', node.ip, ann.backend));
    expect(await addrs(node)).toEqual(['198.19.4.0/32']);
    await b.close();
  });

  test('an existing compatible device keeps its MAC across restarts', async () => {
    const node = cluster.nodes[2]!;
    const before = (await readLink('flannel.1', { netns: node.ns }))!;
    const ann = await newBackend(node).prepare();
    expect(ann.backend).toEqual({ type: 'vxlan', vtep: { vni: 1, mac: before.address }, vtepV6: null });
    expect((await readLink('flannel.1', { netns: node.ns }))!.ifindex).toBe(before.ifindex);
  });

  test.each([
    ['wrong VNI', ['id', '5', 'local', '198.18.0.3', 'dev', 'eth0', 'dstport', '8472', 'nolearning']],
    ['wrong port', ['id', '1', 'local', '198.18.0.3', 'dev', 'eth0', 'dstport', '4789', 'nolearning']],
    ['learning on, no local', ['id', '1', 'dev', 'eth0', 'dstport', '8472', 'learning']],
    ['gbp set', ['id', '1', 'local', '198.18.0.3', 'dev', 'eth0', 'dstport', '8472', 'nolearning', 'gbp']],
  ])('a pre-created device with %s is recreated correctly', async (_what, attrs) => {
    const node = cluster.nodes[2]!;
    await ip(['link', 'del', 'flannel.1'], { netns: node.ns });
    await ip(['link', 'add', 'flannel.1', 'type', 'vxlan', ...attrs], { netns: node.ns });
    const old = (await readLink('flannel.1', { netns: node.ns }))!;
    const ann = await newBackend(node).prepare();
    const link = (await readLink('flannel.1', { netns: node.ns }))!;
    expect(link.vxlan).toEqual({ vni: 1, local: node.ip, dev: 'eth0', port: 8472, learning: false, gbp: false });
    expect(link.ifindex).not.toBe(old.ifindex);
    expect(ann.backend).toEqual({ type: 'vxlan', vtep: { vni: 1, mac: link.address }, vtepV6: null });
  });

  test('VNI, port, GBP and MTU come from the config', async () => {
    const node = cluster.nodes[2]!;
    const ann = await newBackend(node, { Type: 'vxlan', VNI: 42, Port: 4789, GBP: true, MTU: 1400 }).prepare();
    const link = (await readLink('flannel.42', { netns: node.ns }))!;
    expect(link.vxlan).toEqual({ vni: 42, local: node.ip, dev: 'eth0', port: 4789, learning: false, gbp: true });
    // Backend.MTU as upstream defines it: the MTU the encapsulation (50 bytes) is taken from.
    expect(link.mtu).toBe(1350);
    expect(ann).toEqual({ backend: { type: 'vxlan', vtep: { vni: 42, mac: link.address }, vtepV6: null }, mtu: 1350 });
    await ip(['link', 'del', 'flannel.42'], { netns: node.ns });
  });

  test('a VNI above 16 bits: the device carries it and the lease publishes it', async () => {
    const node = cluster.nodes[2]!;
    const ann = await newBackend(node, { Type: 'vxlan', VNI: 70_000 }).prepare();
    const link = (await readLink('flannel.70000', { netns: node.ns }))!;
    expect(link.vxlan).toMatchObject({ vni: 70_000, port: 8472 });
    expect(ann.backend).toEqual({ type: 'vxlan', vtep: { vni: 70_000, mac: link.address }, vtepV6: null });
    await ip(['link', 'del', 'flannel.70000'], { netns: node.ns });
  });

  test('a Backend.MTU that leaves too little for the device is refused with a clear error', async () => {
    const node = cluster.nodes[2]!;
    await expect(newBackend(node, { Type: 'vxlan', VNI: 43, MTU: 100 }).prepare()).rejects.toThrow(/Backend\.MTU 100 leaves 50 for flannel\.43, below IPv4's minimum of 68/);
    expect(await readLink('flannel.43', { netns: node.ns })).toBeNull();
  });

  test('a VNI whose device name the kernel would refuse is refused with a clear error', () => {
    const node = cluster.nodes[2]!;
    expect(() => newBackend(node, { Type: 'vxlan', VNI: 16_777_215 })).toThrow(/flannel\.16777215, longer than the kernel's 15 characters/);
  });
});

describe('peers', () => {
  let b1: VxlanBackend;
  let b2: VxlanBackend;
  let l1: Lease;
  let l2: Lease;

  beforeAll(async () => {
    const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
    b1 = newBackend(n1);
    b2 = newBackend(n2);
    l1 = lease('198.19.1.0/24', n1.ip, (await b1.prepare()).backend);
    l2 = lease('198.19.2.0/24', n2.ip, (await b2.prepare()).backend);
    await b1.setOwnLease(l1);
    await b2.setOwnLease(l2);
    writeEnv(n1, '198.19.1.0/24');
    writeEnv(n2, '198.19.2.0/24');
    await cluster.addPod(n1);
    await cluster.addPod(n2);
  });

  afterAll(async () => {
    await b1.close();
    await b2.close();
  });

  test('the first call removes state left by an earlier run and programs the given peers', async () => {
    const n1 = cluster.nodes[0]!;
    // Leftovers of a peer that vanished while we were down (and a stale direct route).
    await bridgeBatch([fdbSetCommand(permanentFdb('flannel.1', '0a:00:00:00:77:01', a4('198.18.0.77')))], { netns: n1.ns });
    await ipBatch([
      neighSetCommand(permanentNeighbour('flannel.1', a4('198.19.77.0'), '0a:00:00:00:77:01')),
      routeSetCommand(unicastRoute(Ip4Net.parse('198.19.77.0/24'), 'flannel.1', a4('198.19.77.0'), { onlink: true })),
      routeSetCommand(unicastRoute(Ip4Net.parse('198.19.78.0/24'), 'eth0', a4('198.18.0.78'))),
    ], { netns: n1.ns });
    await handle(b1, [added(l2)]);
    const mac2 = macOf(l2);
    expect(await tables(n1)).toEqual({
      routes: [asRead(unicastRoute(Ip4Net.parse('198.19.2.0/24'), 'flannel.1', a4('198.19.2.0'), { onlink: true }))],
      neighs: [permanentNeighbour('flannel.1', a4('198.19.2.0'), mac2)],
      fdb: [permanentFdb('flannel.1', mac2, a4('198.18.0.2'))],
    });
  });

  test('pods on the two nodes reach each other both ways', async () => {
    await handle(b2, [added(l1)]);
    const [p1, p2] = [cluster.nodes[0]!.pods[0]!, cluster.nodes[1]!.pods[0]!];
    expect(await cluster.ping(p1, p2.ip, { count: 2 })).toBe(true);
    expect(await cluster.ping(p2, p1.ip, { count: 2 })).toBe(true);
    expect(b1.stats()).toMatchObject({ peers: 1, errors: 0 });
  });

  test('an FDB entry, neighbour and route deleted by hand come back on the next resync', async () => {
    const n1 = cluster.nodes[0]!;
    const mac2 = macOf(l2);
    const repairsBefore = b1.stats()['repairs']!;
    await ip(['neigh', 'del', '198.19.2.0', 'dev', 'flannel.1'], { netns: n1.ns });
    await ip(['route', 'del', '198.19.2.0/24'], { netns: n1.ns });
    await bridgeBatch([['fdb', 'del', mac2, 'dev', 'flannel.1', 'dst', '198.18.0.2', 'self']], { netns: n1.ns });
    expect((await tables(n1)).fdb).toEqual([]);
    expect(await waitFor(async () => {
      const t = await tables(n1);
      return t.fdb.length === 1 && t.neighs.length === 1 && t.routes.length === 1;
    }, 3000)).toBe(true);
    expect(b1.stats()['repairs']!).toBeGreaterThanOrEqual(repairsBefore + 3);
    expect(await cluster.ping(cluster.nodes[0]!.pods[0]!, cluster.nodes[1]!.pods[0]!.ip)).toBe(true);
  });

  test('a device set down or stripped of its address by hand is restored by the resync', async () => {
    const n1 = cluster.nodes[0]!;
    await ipBatch([['addr', 'flush', 'dev', 'flannel.1'], ['link', 'set', 'flannel.1', 'down']], { netns: n1.ns });
    expect(await waitFor(async () => (await readLink('flannel.1', { netns: n1.ns }))?.up === true, 3000)).toBe(true);
    expect(await addrs(n1)).toEqual(['198.19.1.0/32']);
    // Routes through the device went with it going down; the same resync puts them back.
    expect(await waitFor(() => cluster.ping(n1.pods[0]!, cluster.nodes[1]!.pods[0]!.ip, { timeoutS: 1 }), 3000, 0)).toBe(true);
  });

  test('a peer whose VtepMAC changed (restarted with a new device) is reprogrammed', async () => {
    const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
    await b2.close();
    await ip(['link', 'del', 'flannel.1'], { netns: n2.ns });
    const b2b = newBackend(n2);
    const oldMac = macOf(l2);
    l2 = lease('198.19.2.0/24', n2.ip, (await b2b.prepare()).backend);
    expect(macOf(l2)).not.toBe(oldMac);
    await b2b.setOwnLease(l2);
    await handle(b2b, [added(l1)]);
    b2 = b2b;
    const mac2 = macOf(l2);
    await handle(b1, [added(l2)]);
    const t = await tables(n1);
    expect(t.fdb).toEqual([permanentFdb('flannel.1', mac2, a4(n2.ip))]);
    expect(t.neighs).toEqual([permanentNeighbour('flannel.1', a4('198.19.2.0'), mac2)]);
    expect(await cluster.ping(n1.pods[0]!, n2.pods[0]!.ip, { count: 2 })).toBe(true);
  });

  test('leases that are not usable vxlan leases are skipped with a warning, not fatal', async () => {
    const n1 = cluster.nodes[0]!;
    const skippedBefore = b1.stats()['skippedLeases']!;
    // A vxlan lease without a usable VtepMAC never becomes a Lease: the decoder refuses it, with its reason.
    for (const data of [{ VNI: 1 }, { VNI: 1, VtepMAC: 'not-a-mac' }, { VNI: 1, VtepMAC: '01:00:5e:00:00:01' }]) {
      const value = JSON.stringify({ PublicIP: '198.18.0.6', BackendType: 'vxlan', BackendData: data });
      expect(() => decodeLeaseAttrs(value)).toThrow(expect.objectContaining({ reason: 'bad_vtep_mac' }));
    }
    // A lease of another backend reaches it, and is skipped.
    await handle(b1, [added(lease('198.19.5.0/24', '198.18.0.5', { type: 'udp' }))]);
    expect(b1.stats()['skippedLeases']! - skippedBefore).toBe(1);
    expect(b1.stats()).toMatchObject({ peers: 1, errors: 0 });
    expect((await tables(n1)).routes.map((r) => r.dst.toString())).toEqual(['198.19.2.0/24']);
  });

  test('a removal event deletes the route, neighbour and FDB entry', async () => {
    const n1 = cluster.nodes[0]!;
    await handle(b1, [removed(l2)]);
    expect(await tables(n1)).toEqual({ routes: [], neighs: [], fdb: [] });
    expect(b1.stats()).toMatchObject({ peers: 0 });
    expect(await cluster.ping(n1.pods[0]!, cluster.nodes[1]!.pods[0]!.ip, { timeoutS: 1 })).toBe(false);
  });

  test('a deleted flannel.1 is recreated with the same MAC by the resync', async () => {
    const n1 = cluster.nodes[0]!;
    await handle(b1, [added(l2)]);
    const mac1 = macOf(l1);
    await ip(['link', 'del', 'flannel.1'], { netns: n1.ns });
    expect(await waitFor(async () => (await tables(n1).catch(() => null))?.fdb.length === 1, 3000)).toBe(true);
    expect((await readLink('flannel.1', { netns: n1.ns }))?.address).toBe(mac1);
    expect(await addrs(n1)).toEqual(['198.19.1.0/32']);
    expect(await cluster.ping(n1.pods[0]!, cluster.nodes[1]!.pods[0]!.ip, { count: 2 })).toBe(true);
  });
});

describe('VTEP MAC', () => {
  test('a MAC changed after bring-up (as systemd\'s MACAddressPolicy can) is set back to the published one', async () => {
    const node = cluster.nodes[2]!;
    await ip(['link', 'del', 'flannel.1'], { netns: node.ns }).catch(() => undefined);
    const b = newBackend(node);
    const ann = await b.prepare();
    if (ann.backend.type !== 'vxlan') throw new Error('not vxlan');
    const published = ann.backend.vtep.mac;
    // Chosen by us and set at creation: locally administered and unicast.
    expect(parseInt(published.slice(0, 2), 16) & 0x03).toBe(0x02);
    await b.setOwnLease(lease('198.19.3.0/24', node.ip, ann.backend));
    await handle(b, []);
    await ip(['link', 'set', 'dev', 'flannel.1', 'address', '02:99:99:99:99:99'], { netns: node.ns });
    // Set back by the resync, which counts it as a repair once its pass is done.
    expect(await waitFor(async () => (await readLink('flannel.1', { netns: node.ns }))?.address === published && b.stats()['repairs']! >= 1, 3000)).toBe(true);
    await b.close();
  });
});

describe('DirectRouting', () => {
  test('a peer on the same L2 segment is routed via its PublicIP, with no neighbour or FDB entry', async () => {
    const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
    const direct = { Type: 'vxlan', DirectRouting: true };
    const d1 = newBackend(n1, direct);
    const d2 = newBackend(n2, direct);
    const dl1 = lease('198.19.1.0/24', n1.ip, (await d1.prepare()).backend);
    const dl2 = lease('198.19.2.0/24', n2.ip, (await d2.prepare()).backend);
    await d1.setOwnLease(dl1);
    await d2.setOwnLease(dl2);
    await handle(d1, [added(dl2)]);
    await handle(d2, [added(dl1)]);
    expect(await tables(n1)).toEqual({
      routes: [asRead(unicastRoute(Ip4Net.parse('198.19.2.0/24'), 'eth0', a4(n2.ip)))],
      neighs: [],
      fdb: [],
    });
    expect(d1.stats()).toMatchObject({ peers: 1, directPeers: 1 });
    expect(await cluster.ping(n1.pods[0]!, n2.pods[0]!.ip, { count: 2 })).toBe(true);
    expect(await cluster.ping(n2.pods[0]!, n1.pods[0]!.ip, { count: 2 })).toBe(true);
    await handle(d1, [removed(dl2)]);
    expect((await tables(n1)).routes).toEqual([]);
  });
});
