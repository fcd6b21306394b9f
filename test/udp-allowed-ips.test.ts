// The udp receive path's AllowedIPs rule (WireGuard's): a datagram is delivered only when its inner
// source lies in a subnet of the member it came from. The outer source is all a forwarder sees of
// the sender, and anyone on the underlay can forge it; so a datagram sent from node A's own
// namespace with A's address is exactly what a forger of A's address sends.
//
// Three nodes; node B runs the udp backend with A and C as members (A and C run nothing: their
// datagrams are made by hand). Spoofed inner sources: B's own pod (the case that reached pods
// before), C's subnet (another member's), an address no lease covers. Paths: single datagrams,
// UDP GSO bursts that arrive as one UDP_GRO message and would be coalesced into one TUN write
// (mixed legitimate and spoofed segments too), and a forwarder with every optimisation off
// (upstream's one datagram per system call). Last, the same spoofed datagrams with the check
// switched off (the bench's switch) do reach the pod: the assertions above can fail.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { BackendContext } from '../src/backend/backend.js';
import { UdpForwarder, type ForwarderStats, type UdpForwarderOptions } from '../src/backend/udp/native.js';
import { UdpBackend } from '../src/backend/udp/udp-backend.js';
import { formatIp4, parseIp4 } from '../src/common/ip4.js';
import { silentLogger } from '../src/common/log.js';
import { parseNetworkConfig, type UdpBackendConfig } from '../src/subnet/config.js';
import type { Lease } from '../src/subnet/lease.js';
import { GSO_TCP_BURST, INNER_SENDER, UDP_COUNTER, kernelCounter, nodeScript } from '../testbed/udp-probes.js';
import { addressFlannel0, createTopology, type TopoNode, type Topology } from '../testbed/udp-topology.js';
import { run } from '../testbed/netns.js';

const NETWORK = parseNetworkConfig(JSON.stringify({ Network: '198.19.0.0/16', Backend: { Type: 'udp' } }));

let topo: Topology;
let nodeA: TopoNode;
let nodeB: TopoNode;
let nodeC: TopoNode;
let backendB: UdpBackend | null = null;
/** B's data path when it is a bare forwarder (the plain path, the switched-off check). */
let forwarderB: UdpForwarder | null = null;

const udpLease = (node: TopoNode): Lease => ({ subnet: node.subnet, attrs: { publicIP: node.ip, publicIPv6: null, backend: { type: 'udp' } }, expiration: null });
/** An address of a node's subnet other than its pod's (cni0 has .1, the pod .2). */
const inSubnet = (node: TopoNode, host: number): string => formatIp4(node.subnet.ip + host);
const NO_LEASE = '198.19.99.5';

function statsB(): ForwarderStats {
  if (forwarderB) return forwarderB.stats();
  return backendB!.stats() as unknown as ForwarderStats;
}

/** The growth of B's counters while `work` runs. */
async function deltaB(work: () => Promise<void>): Promise<Record<string, number>> {
  const before = statsB();
  await work();
  const after = statsB();
  return Object.fromEntries(Object.keys(after).map((k) => [k, after[k]! - (before[k] ?? 0)]));
}

/**
 * 20 UDP datagrams from each sender (its namespace, and the inner source it claims), all at once,
 * carrying packets to B's pod; how many the pod got in all.
 */
async function deliver(...senders: [fromNs: string, src: string][]): Promise<number> {
  const counter = nodeScript(nodeB.pod.ns, UDP_COUNTER, ['3000']);
  await counter.ready;
  await Promise.all(senders.map(([ns, src]) => nodeScript(ns, INNER_SENDER, [nodeB.ip, nodeB.pod.ip, src, '20']).done));
  return Number(await counter.done);
}

/** The same datagrams, without counting what the pod got. */
async function send(fromNs: string, src: string): Promise<void> {
  await nodeScript(fromNs, INNER_SENDER, [nodeB.ip, nodeB.pod.ip, src, '20']).done;
}

/** IPv4 packets B's pod's kernel received (anything at all that reached the pod). */
const podReceived = (): Promise<number> => kernelCounter(nodeB.pod.ns, 'IpInReceives');

/** One UDP GSO burst from A's address: a TCP segment to B's pod for each inner source. */
async function burstFromA(srcs: string[], port: number): Promise<void> {
  await run(['python3', '-c', GSO_TCP_BURST, nodeB.ip, nodeA.ip, nodeB.pod.ip, String(port), '1000', ...srcs], { netns: nodeA.ns });
}

function bareForwarderB(opts: Partial<UdpForwarderOptions>): UdpForwarder {
  const f = new UdpForwarder({ tunName: 'flannel0', mtu: 1472, bindAddress: parseIp4(nodeB.ip), port: 8285, netns: nodeB.ns, ...opts });
  f.setTable({
    own: nodeB.subnet,
    icmpSource: NETWORK.network.ip,
    routes: [nodeA, nodeC].map((n) => ({ subnet: n.subnet, peer: parseIp4(n.ip), port: 8285 })),
  });
  return f;
}

beforeAll(async () => {
  topo = await createTopology({ nodes: 3, podMtu: 1472, prefix: 'udpai' });
  [nodeA, nodeB, nodeC] = topo.nodes as [TopoNode, TopoNode, TopoNode];
  const ctx: BackendContext = { extIface: { name: 'eth0', ifaceIP: nodeB.ip, publicIP: nodeB.ip, mtu: 1500 }, network: NETWORK, log: silentLogger };
  backendB = new UdpBackend(ctx, NETWORK.backend as UdpBackendConfig, { netns: nodeB.ns, resyncIntervalMs: 200 });
  await backendB.prepare();
  await backendB.setOwnLease(udpLease(nodeB));
  await backendB.handleLeaseEvents([
    { type: 'added', lease: udpLease(nodeA) },
    { type: 'added', lease: udpLease(nodeC) },
  ]);
});

afterAll(async () => {
  await backendB?.close();
  forwarderB?.close();
  await topo?.destroy();
});

describe('the udp backend (every optimisation on)', () => {
  test('single datagrams: a member speaks for its own subnet only; spoofed inner sources are dropped and counted', async () => {
    // Legitimate: A for A's subnet, C for C's.
    let d = await deltaB(async () => {
      expect(await deliver([nodeA.ns, nodeA.pod.ip], [nodeC.ns, inSubnet(nodeC, 77)])).toBe(40);
    });
    expect(d['dropSpoofedSource']).toBe(0);
    expect(d['rxPackets']).toBe(40);

    const podBefore = await podReceived();
    d = await deltaB(async () => {
      const delivered = await deliver(
        [nodeA.ns, inSubnet(nodeB, 3)], // another pod of B as the source
        [nodeA.ns, nodeB.pod.ip], // the target pod itself
        [nodeA.ns, inSubnet(nodeB, 1)], // B's cni0 address
        [nodeA.ns, nodeC.pod.ip], // another member's pod
        [nodeC.ns, nodeA.pod.ip], // C speaking for A's subnet
        [nodeA.ns, NO_LEASE], // an address no lease covers
      );
      expect(delivered).toBe(0);
    });
    expect(d['dropSpoofedSource']).toBe(120);
    expect(d['rxPackets']).toBe(0);
    expect(d['dropUnknownSource']).toBe(0); // the senders are members: it is the inner source that fails
    expect(await podReceived()).toBe(podBefore);
  });

  test('GSO bursts arriving as one UDP_GRO message: spoofed segments never coalesced nor delivered, legitimate ones are', async () => {
    const legit = Array.from({ length: 16 }, () => nodeA.pod.ip);
    let podBefore = await podReceived();
    let d = await deltaB(() => burstFromA(legit, 7201));
    // The path under test ran: one GRO message, coalesced into TUN super-packet writes.
    expect(d['udpGroRecvs']).toBe(1);
    expect(d['tunGsoWrites']).toBeGreaterThan(0);
    expect(d['rxPackets']).toBe(16);
    expect(d['dropSpoofedSource']).toBe(0);
    expect(await podReceived()).toBeGreaterThan(podBefore);

    podBefore = await podReceived();
    d = await deltaB(() => burstFromA(Array.from({ length: 16 }, () => inSubnet(nodeB, 3)), 7202));
    expect(d['udpGroRecvs']).toBe(1);
    expect(d['dropSpoofedSource']).toBe(16);
    expect(d['rxPackets']).toBe(0);
    expect(d['tunWrites']).toBe(0);
    expect(await podReceived()).toBe(podBefore);

    // Mixed in one message: each segment is judged alone, whatever its neighbours were.
    const mixed = Array.from({ length: 24 }, (_, i) => [nodeA.pod.ip, inSubnet(nodeB, 3), inSubnet(nodeA, 9), nodeC.pod.ip][i % 4]!);
    d = await deltaB(() => burstFromA(mixed, 7203));
    expect(d['udpGroRecvs']).toBe(1);
    expect(d['dropSpoofedSource']).toBe(12);
    expect(d['rxPackets']).toBe(12);
  });
});

describe('a forwarder with every optimisation off (one datagram per system call)', () => {
  test('the same rule on the plain path: spoofed dropped and counted, legitimate delivered', async () => {
    await backendB!.close();
    backendB = null;
    forwarderB = bareForwarderB({ batch: false, tunOffload: false, udpGso: false, udpGro: false, tunCoalesce: false });
    await addressFlannel0(nodeB);
    expect(forwarderB.features()).toMatchObject({ udpGro: false, tunCoalesce: false });
    const podBefore = await podReceived();
    let d = await deltaB(async () => {
      expect(await deliver([nodeA.ns, inSubnet(nodeB, 3)], [nodeC.ns, nodeA.pod.ip])).toBe(0);
      // A GSO burst is cut into single datagrams by B's kernel here (no UDP_GRO on the socket).
      await burstFromA(Array.from({ length: 8 }, () => inSubnet(nodeB, 3)), 7204);
    });
    expect(d['dropSpoofedSource']).toBe(48);
    expect(d['rxPackets']).toBe(0);
    expect(d['udpGroRecvs']).toBe(0);
    expect(await podReceived()).toBe(podBefore);

    d = await deltaB(async () => {
      expect(await deliver([nodeA.ns, nodeA.pod.ip], [nodeC.ns, nodeC.pod.ip])).toBe(40);
    });
    expect(d['dropSpoofedSource']).toBe(0);
    expect(d['rxPackets']).toBe(40);
  });
});

describe('control', () => {
  test('with the check switched off (the bench measures its cost that way), the spoofed datagrams do reach the pod', async () => {
    forwarderB?.close();
    forwarderB = bareForwarderB({ innerSourceCheck: false });
    await addressFlannel0(nodeB);
    const d = await deltaB(async () => {
      expect(await deliver([nodeA.ns, nodeC.pod.ip], [nodeA.ns, NO_LEASE])).toBe(40);
      // Another pod of B as the source: written to flannel0 too. Whether B's kernel then passes it
      // to the pod depends on its rp_filter (strict mode drops it, loose or off lets it through).
      await send(nodeA.ns, inSubnet(nodeB, 3));
    });
    expect(d['dropSpoofedSource']).toBe(0);
    expect(d['rxPackets']).toBe(60);
  });
});
