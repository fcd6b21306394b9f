// The udp backend and its native data path on two real nodes (network namespaces, no etcd):
// UdpBackend on each node, pods behind cni0, real packets. Covers the device upstream would make,
// bulk TCP integrity through our TSO splitting / UDP GSO / GRO / TUN coalescing, interoperation
// with a peer that uses none of them (upstream's one-packet-per-datagram behaviour), ICMP net
// unreachable, lease changes, non-member sources, and garbage datagrams while traffic flows.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { BackendContext } from '../src/backend/backend.js';
import { UdpForwarder, forwarderCounterNames, type ForwarderStats } from '../src/backend/udp/native.js';
import { UdpBackend } from '../src/backend/udp/udp-backend.js';
import { silentLogger } from '../src/common/log.js';
import { ip, ipJson } from '../src/routes/ip.js';
import { parseNetworkConfig, type UdpBackendConfig } from '../src/subnet/config.js';
import { formatIp4, parseIp4 } from '../src/common/ip4.js';
import type { Lease, LeaseEvent } from '../src/subnet/lease.js';
import { added, removed } from './harness/leases.js';
import { FUZZER, INNER_SENDER, UDP_COUNTER, kernelCounter, nodeScript as script } from '../testbed/udp-probes.js';
import { addressFlannel0, createTopology, type TopoNode, type Topology } from '../testbed/udp-topology.js';
import { addUnderlayHost, delNetns, run, sleep, waitFor } from '../testbed/netns.js';

const NETWORK = parseNetworkConfig(JSON.stringify({ Network: '198.19.0.0/16', Backend: { Type: 'udp' } }));
const UDP_CONFIG = NETWORK.backend as UdpBackendConfig;

let topo: Topology;
let outsiderNs: string;
let nodeA: TopoNode;
let nodeB: TopoNode;
let backendA: UdpBackend;
let backendB: UdpBackend | null = null;
const forwarders: UdpForwarder[] = [];

function udpLease(node: TopoNode): Lease {
  return { subnet: node.subnet, attrs: { publicIP: node.ip, publicIPv6: null, backend: { type: 'udp' } }, expiration: null };
}

function newBackend(node: TopoNode): UdpBackend {
  const ctx: BackendContext = { extIface: { name: 'eth0', ifaceIP: node.ip, publicIP: node.ip, mtu: 1500 }, network: NETWORK, log: silentLogger };
  return new UdpBackend(ctx, UDP_CONFIG, { netns: node.ns, resyncIntervalMs: 200 });
}


function delta(after: ForwarderStats, before: ForwarderStats): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of Object.keys(after) as (keyof ForwarderStats)[]) out[k] = after[k] - before[k];
  return out;
}

function statsOf(b: UdpBackend): ForwarderStats {
  return b.stats() as unknown as ForwarderStats;
}

// TCP sink: hashes everything one connection sends, prints "<bytes> <sha256>".
const TCP_SINK = `
import net from 'node:net'; import { createHash } from 'node:crypto';
const srv = net.createServer((s) => { const h = createHash('sha256'); let n = 0;
  s.on('data', (d) => { h.update(d); n += d.length; });
  s.on('end', () => { console.log(n + ' ' + h.digest('hex')); s.end(); srv.close(); }); });
srv.listen(Number(process.argv[1]), () => console.log('ready'));`;

// TCP source: sends argv[3] bytes of seeded pseudo-random data, prints "<bytes> <sha256>".
const TCP_SOURCE = `
import net from 'node:net'; import { createHash } from 'node:crypto';
const [host, port, total] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
const h = createHash('sha256'); let x = 0x9e3779b9, sent = 0;
const s = net.connect(port, host, () => {
  const pump = () => { while (sent < total) {
      const words = new Uint32Array(Math.min(65536, total - sent) / 4);
      for (let i = 0; i < words.length; i++) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; words[i] = x >>> 0; }
      const b = Buffer.from(words.buffer); h.update(b); sent += b.length;
      if (!s.write(b)) { s.once('drain', pump); return; } }
    s.end(); };
  pump(); });
s.on('close', () => console.log(sent + ' ' + h.digest('hex')));`;

/** Moves `bytes` from pod A to pod B over TCP and checks they arrived unaltered. */
async function tcpTransfer(from: TopoNode, to: TopoNode, bytes: number, port: number): Promise<void> {
  const sink = script(to.pod.ns, TCP_SINK, [String(port)], 20_000);
  await sink.ready;
  const source = await script(from.pod.ns, TCP_SOURCE, [to.pod.ip, String(port), String(bytes)], 20_000).done;
  const received = await sink.done;
  expect(source.split(' ')[0]).toBe(String(bytes));
  expect(received).toBe(source);
}

beforeAll(async () => {
  topo = await createTopology({ nodes: 2, podMtu: 1472, prefix: 'udpn' });
  [nodeA, nodeB] = topo.nodes as [TopoNode, TopoNode];
  // A host on the underlay that holds no lease.
  outsiderNs = await addUnderlayHost(topo.hubNs, '198.18.0.9');

  backendA = newBackend(nodeA);
  backendB = newBackend(nodeB);
  for (const [b, self, peer] of [
    [backendA, nodeA, nodeB],
    [backendB, nodeB, nodeA],
  ] as const) {
    expect(await b.prepare()).toEqual({ backend: { type: 'udp' }, mtu: 1472 });
    await b.setOwnLease(udpLease(self));
    await b.handleLeaseEvents([added(udpLease(peer))]);
  }
});

afterAll(async () => {
  await backendA?.close();
  await backendB?.close();
  for (const f of forwarders) f.close();
  if (outsiderNs) await delNetns(outsiderNs);
  await topo?.destroy();
});

describe('device and addresses', () => {
  test('flannel0 is a TUN without packet info, MTU 1500 - 28, up, with the subnet address as /32', async () => {
    const [link] = await ipJson<{ mtu: number; flags: string[]; linkinfo?: { info_kind: string; info_data?: Record<string, unknown> } }>(
      ['-details', 'link', 'show', 'dev', 'flannel0'],
      { netns: nodeA.ns },
    );
    expect(link?.mtu).toBe(1472);
    expect(link?.flags).toEqual(expect.arrayContaining(['POINTOPOINT', 'NOARP', 'UP']));
    expect(link?.linkinfo?.info_kind).toBe('tun');
    expect(link?.linkinfo?.info_data).toMatchObject({ type: 'tun', pi: false });
    const [addrs] = await ipJson<{ addr_info: { family: string; local: string; prefixlen: number }[] }>(['addr', 'show', 'dev', 'flannel0'], {
      netns: nodeA.ns,
    });
    // Upstream's choice: the subnet's network address, /32 so that no broadcast routes appear.
    expect(addrs?.addr_info.filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`)).toEqual([`${formatIp4(nodeA.subnet.ip)}/32`]);
  });

  test('one route for the whole Network through flannel0, scope global', async () => {
    const routes = await ipJson<{ dst: string; dev: string; scope?: string }>(['route', 'show', 'dev', 'flannel0'], { netns: nodeA.ns });
    expect(routes.filter((r) => r.dst.startsWith('198.19.')).map((r) => r.dst)).toEqual(['198.19.0.0/16']);
    expect(routes[0]?.scope).toBeUndefined(); // ip -json omits "global"; a device route would say "link"

  });

  test('the UDP socket listens on the interface address, port 8285', async () => {
    const res = await run(['ss', '-Hulnp', 'sport', '= :8285'], { netns: nodeA.ns });
    expect(res.stdout).toContain('198.18.0.1:8285');
  });

  test('a second instance is refused while flannel0 exists, with a clear error', () => {
    const make = (): UdpForwarder => new UdpForwarder({ tunName: 'flannel0', mtu: 1472, bindAddress: parseIp4(nodeA.ip), port: 8285, netns: nodeA.ns });
    expect(make).toThrow(/flannel0 already exists/);
  });

  test('bad options are rejected with the field named', () => {
    expect(() => new UdpForwarder({ tunName: 'x', mtu: 10, bindAddress: 0, port: 8285, netns: nodeA.ns })).toThrow(/mtu must be an integer between 68/);
    expect(() => new UdpForwarder({ tunName: 'x', mtu: 1400, bindAddress: 0, port: 0, netns: nodeA.ns })).toThrow(/port must be/);
  });
});

describe('forwarding', () => {
  test('pods on the two nodes reach each other', async () => {
    for (const [from, to] of [
      [nodeA, nodeB],
      [nodeB, nodeA],
    ] as const) {
      const res = await run(['ping', '-n', '-c', '3', '-i', '0.2', '-W', '2', to.pod.ip], { netns: from.pod.ns, allowFail: true });
      expect(res.code, res.stdout).toBe(0);
    }
  });

  test('64 MiB of TCP arrive intact through TSO splitting, UDP GSO/GRO and TUN coalescing', async () => {
    const a0 = statsOf(backendA);
    const b0 = statsOf(backendB!);
    await tcpTransfer(nodeA, nodeB, 64 << 20, 7001);
    const a = delta(statsOf(backendA), a0);
    const b = delta(statsOf(backendB!), b0);
    // The fast paths really ran: super-packets from the TUN, multi-datagram sends and receives,
    // coalesced writes into the TUN.
    expect(a['tunGsoReads']).toBeGreaterThan(0);
    expect(a['udpGsoSends']).toBeGreaterThan(0);
    expect(b['udpGroRecvs']).toBeGreaterThan(0);
    expect(b['tunGsoWrites']).toBeGreaterThan(0);
    // Coalescing re-counts the original segments (a loss under CPU contention is tolerated).
    expect(b['rxPackets']).toBeLessThanOrEqual(a['txPackets']!);
    expect(b['rxPackets']).toBeGreaterThan(a['txPackets']! * 0.99);
    // Each datagram on the wire is one packet that fits the MTU.
    expect(statsOf(backendB!).rxMaxDatagram).toBeLessThanOrEqual(1472);
  });

  test('ICMP net unreachable comes back for a subnet no lease covers', async () => {
    const before = statsOf(backendA);
    const res = await run(['ping', '-n', '-c', '1', '-W', '2', '198.19.77.5'], { netns: nodeA.pod.ns, allowFail: true });
    expect(res.code).not.toBe(0);
    // From the Network's base address (see UdpBackend.pushTable for why not flannel0's).
    expect(res.stdout).toMatch(/From 198\.19\.0\.0 .*Destination Net Unreachable/);
    const d = delta(statsOf(backendA), before);
    expect(d['dropNoRoute']).toBe(1);
    expect(d['icmpUnreachableSent']).toBe(1);
  });

  test('removing and re-adding a lease updates the table; leases of other backends are ignored', async () => {
    const ping = async (): Promise<string> =>
      (await run(['ping', '-n', '-c', '1', '-W', '1', nodeB.pod.ip], { netns: nodeA.pod.ns, allowFail: true })).stdout;
    // Only the first call waits for its table swap; settled() waits for the later ones.
    const handle = async (events: LeaseEvent[]): Promise<void> => {
      await backendA.handleLeaseEvents(events);
      await backendA.settled();
    };
    try {
      await handle([removed(udpLease(nodeB))]);
      expect(await ping()).toMatch(/Destination Net Unreachable/);
      expect(backendA.stats()['leases']).toBe(0);
      const vxlanLease: Lease = { ...udpLease(nodeB), attrs: { ...udpLease(nodeB).attrs, backend: { type: 'vxlan', vtep: { vni: 1, mac: '0e:00:00:00:00:01' }, vtepV6: null } } };
      await handle([added(vxlanLease)]);
      expect(await ping()).toMatch(/Destination Net Unreachable/);
      await handle([added(udpLease(nodeA))]); // our own subnet: never a route
      expect(backendA.stats()['leases']).toBe(0);
    } finally {
      await handle([added(udpLease(nodeB))]); // later tests need the route
    }
    expect(await ping()).toMatch(/1 received/);
    expect(backendA.stats()['leases']).toBe(1);
  });
});

describe('repair', () => {
  test('a deleted flannel0 or Network route is put back within a resync interval', async () => {
    const reaches = async (): Promise<boolean> =>
      (await run(['ping', '-n', '-c', '1', '-W', '1', nodeB.pod.ip], { netns: nodeA.pod.ns, allowFail: true })).code === 0;
    await ip(['link', 'del', 'flannel0'], { netns: nodeA.ns });
    expect(await waitFor(reaches, 10_000)).toBe(true);
    const [addrs] = await ipJson<{ addr_info: { family: string; local: string }[] }>(['addr', 'show', 'dev', 'flannel0'], { netns: nodeA.ns });
    expect(addrs?.addr_info.filter((a) => a.family === 'inet').map((a) => a.local)).toEqual([formatIp4(nodeA.subnet.ip)]);
    await ip(['route', 'del', '198.19.0.0/16', 'dev', 'flannel0'], { netns: nodeA.ns });
    expect(await waitFor(reaches, 10_000)).toBe(true);
  });
});

describe('what peers may send', () => {
  test('well-formed packets from a non-member address are dropped and counted; from a member they arrive', async () => {
    const send = async (ns: string, src: string, count: number): Promise<number> => {
      const counter = script(nodeB.pod.ns, UDP_COUNTER, ['3000']);
      await counter.ready;
      await script(ns, INNER_SENDER, [nodeB.ip, nodeB.pod.ip, src, String(count)]).done;
      return Number(await counter.done);
    };
    const before = statsOf(backendB!);
    expect(await send(outsiderNs, '198.19.99.5', 25)).toBe(0);
    expect(delta(statsOf(backendB!), before)['dropUnknownSource']).toBe(25);
    // The same packets from node A's address (a lease holder) get through: the check above can fail.
    expect(await send(nodeA.ns, nodeA.pod.ip, 25)).toBe(25);
  });

  test('garbage datagrams from a member for 3 s: each dropped and counted by reason, while TCP and ping still flow', async () => {
    const before = statsOf(backendB!);
    const overflowsBefore = await kernelCounter(nodeB.ns, 'UdpRcvbufErrors');
    const fuzz = script(nodeA.ns, FUZZER, [nodeB.ip, nodeB.pod.ip, '3000', nodeA.pod.ip, '198.19.50.5']);
    const pinging = run(['ping', '-n', '-q', '-c', '100', '-i', '0.02', '-W', '2', nodeB.pod.ip], { netns: nodeA.pod.ns, allowFail: true });
    await tcpTransfer(nodeA, nodeB, 16 << 20, 7002);
    const sent = JSON.parse(await fuzz.done) as Record<string, number>;
    const pings = await pinging;
    expect(pings.stdout).toMatch(/100 packets transmitted, (9[5-9]|100) received/);
    await sleep(200);
    const d = delta(statsOf(backendB!), before);
    // Random bytes land in any bucket, so per reason we know a lower bound and in total the sum.
    expect(d['dropMalformedShort']).toBeGreaterThanOrEqual(sent['short']!);
    expect(d['dropMalformedVersion']).toBeGreaterThanOrEqual(sent['version']!);
    expect(d['dropMalformedHeader']).toBeGreaterThanOrEqual(sent['header']!);
    expect(d['dropMalformedLength']).toBeGreaterThanOrEqual(sent['length']!);
    expect(d['dropMalformedChecksum']).toBeGreaterThanOrEqual(sent['checksum']!);
    expect(d['dropTtlExpired']).toBeGreaterThanOrEqual(sent['ttl']!);
    expect(d['dropNotLocal']).toBeGreaterThanOrEqual(sent['notLocal']!);
    const drops = ['dropMalformedShort', 'dropMalformedVersion', 'dropMalformedHeader', 'dropMalformedLength', 'dropMalformedChecksum', 'dropTtlExpired', 'dropNotLocal'];
    const totalSent = Object.values(sent).reduce((x, y) => x + y, 0);
    // Every datagram is accounted for, unless the kernel dropped some before we could read them.
    const overflows = (await kernelCounter(nodeB.ns, 'UdpRcvbufErrors')) - overflowsBefore;
    const counted = drops.reduce((x, k) => x + d[k]!, 0);
    expect(counted).toBeLessThanOrEqual(totalSent);
    expect(counted).toBeGreaterThanOrEqual(totalSent - overflows);
    expect(totalSent).toBeGreaterThan(1000);
  });
});

describe('a peer without any offload (upstream-style: one packet per system call)', () => {
  test('interoperates both ways; the kernel verifies every segment checksum we computed', async () => {
    await backendB!.close();
    backendB = null;
    const plain = new UdpForwarder({
      tunName: 'flannel0', mtu: 1472, bindAddress: parseIp4(nodeB.ip), port: 8285, netns: nodeB.ns,
      batch: false, tunOffload: false, udpGso: false, udpGro: false, tunCoalesce: false,
    });
    forwarders.push(plain);
    expect(plain.features()).toMatchObject({ vnetHdr: false, tso: false, udpGso: false, udpGro: false, tunCoalesce: false });
    await addressFlannel0(nodeB);
    plain.setTable({ own: nodeB.subnet, icmpSource: NETWORK.network.ip, routes: [{ subnet: nodeA.subnet, peer: parseIp4(nodeA.ip), port: 8285 }] });
    const csumBefore = await kernelCounter(nodeB.pod.ns, 'TcpInCsumErrors');
    await tcpTransfer(nodeA, nodeB, 32 << 20, 7003); // our TSO split -> plain single-packet writes
    await tcpTransfer(nodeB, nodeA, 32 << 20, 7004); // plain datagrams -> our coalescing
    const s = plain.stats();
    // Every counter named once in counters.h is reported, and nothing else.
    expect(Object.keys(s).sort()).toEqual([...forwarderCounterNames()].sort());
    expect(s.rxMaxDatagram).toBeLessThanOrEqual(1472);
    expect(s.udpGroRecvs).toBe(0);
    expect(s.dropMalformedLength + s.dropMalformedChecksum).toBe(0);
    expect(await kernelCounter(nodeB.pod.ns, 'TcpInCsumErrors')).toBe(csumBefore);
    expect(statsOf(backendA).tunGsoWrites).toBeGreaterThan(0);
  });
});

describe('stop', () => {
  test('close() joins the threads and removes flannel0; the port is free again', async () => {
    const f = forwarders.pop()!;
    f.close();
    const links = await ipJson<{ ifname: string }>(['link', 'show'], { netns: nodeB.ns });
    expect(links.map((l) => l.ifname)).not.toContain('flannel0');
    expect(() => f.setTable({ own: null, icmpSource: null, routes: [] })).toThrow(/closed/);
    // A new forwarder can take the device name and the port again.
    const again = new UdpForwarder({ tunName: 'flannel0', mtu: 1472, bindAddress: parseIp4(nodeB.ip), port: 8285, netns: nodeB.ns });
    again.close();
    expect(again.stats().txPackets).toBe(0);
  });
});
