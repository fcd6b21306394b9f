// The wireguard backend driven directly on two real nodes (network namespaces, each with its own
// /run/wireguard; wireguard-go where the kernel has no module), leases handed over by hand, no etcd:
// what its one kernel reconciler does with WireGuard peers beside routes —
//  - the first batch programs the devices' key and port, every peer, the Network's route and our address;
//  - a lease changed rewrites its own peer alone (one op), and the other peer's session goes on; a new key
//    replaces its old peer;
//  - an unchanged kernel costs no compare (the dump's digest); what others change (a peer removed, one
//    rewritten, one added by hand, the port, the route, the address) is put back by the next full pass;
//  - a lease removed takes its peer alone;
//  - the WireGuard path's verdicts per entry: a peer naming a PSK the path does not hold is refused
//    alone, a device that is not there refuses its batch.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { WireguardBackend } from '../src/backend/wireguard/wireguard-backend.js';
import { generatePrivateKey, publicKeyOf } from '../src/backend/wireguard/keys.js';
import { Ip4Net } from '../src/common/ip4.js';
import { wgKeyFingerprint } from '../src/common/wg-key.js';
import { type KernelOp, wgPeer } from '../src/routes/entries.js';
import { WgClient } from '../src/routes/wg.js';
import { WireguardPath } from '../src/routes/wireguard-path.js';
import { parseNetworkConfig } from '../src/subnet/config.js';
import type { Lease } from '../src/subnet/lease.js';
import { added, removed } from './harness/leases.js';
import { capturingLogger } from './harness/log-capture.js';
import { type WireguardRoom, wireguardRoom } from './harness/wireguard.js';
import { run, waitFor } from '../testbed/netns.js';
import { createTopology, type TopoNode, type Topology } from '../testbed/udp-topology.js';

const PSK = 'FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=';
const network = parseNetworkConfig(JSON.stringify({ Network: '198.19.0.0/16', Backend: { Type: 'wireguard', PSK, PersistentKeepaliveInterval: 0 } }));
const DEV = 'flannel-wg';

interface Node {
  topo: TopoNode;
  room: WireguardRoom;
  wg: WgClient;
  backend: WireguardBackend;
  lines: Record<string, unknown>[];
  lease: Lease;
}

let topo: Topology;
let keyDir: string;
let a: Node;
let b: Node;
/** A third node's lease, with nothing behind it. */
let c: Lease;

function leaseOf(subnet: Ip4Net, publicIP: string, publicKey: string, port: number | null = 51820): Lease {
  return { subnet, attrs: { publicIP, publicIPv6: null, backend: { type: 'wireguard', peer: { publicKey, port }, peerV6: null } }, expiration: null };
}

async function start(t: TopoNode): Promise<Node> {
  const room = await wireguardRoom(t.ns);
  const { log, lines } = capturingLogger();
  const config = network.backend;
  if (config.type !== 'wireguard') throw new Error('not a wireguard config');
  const backend = new WireguardBackend(
    { extIface: { name: 'eth0', ifaceIP: t.ip, publicIP: t.ip, mtu: 1500 }, network, log },
    config,
    // No periodic pass: the test asks for each full pass (resync) and counts what it changed.
    { netns: t.ns, enter: room.enter, keyFile: join(keyDir, `node${t.index}.key`), resyncIntervalMs: 0 },
  );
  const announced = await backend.prepare();
  if (announced.backend.type !== 'wireguard') throw new Error('not a wireguard announcement');
  const lease = leaseOf(t.subnet, t.ip, announced.backend.peer.publicKey);
  await backend.setOwnLease(lease);
  return { topo: t, room, wg: new WgClient({ enter: room.enter }), backend, lines, lease };
}

const podsTalk = (from: Node, to: Node): Promise<boolean> =>
  waitFor(async () => (await run(['ping', '-n', '-c', '1', '-W', '1', to.topo.pod.ip], { netns: from.topo.pod.ns, allowFail: true })).code === 0, 15_000, 0);

/** The peers of `n`'s device, one line each, without handshake times and byte counts. */
async function peers(n: Node): Promise<string[]> {
  return (await n.wg.show(DEV)).peers.map((p) => `${p.publicKey} ${p.endpoint} ${p.allowedIPs.join(',')} psk=${p.presharedKeyId}`).sort();
}

const line = (lease: Lease): string => {
  const be = lease.attrs.backend as { peer: { publicKey: string; port: number | null } };
  return `${be.peer.publicKey} ${lease.attrs.publicIP}:${be.peer.port ?? 51820} ${lease.subnet} psk=${wgKeyFingerprint(PSK)}`;
};

/** The reconciler's batches sent since `from` (its debug lines), as [reason, ops]. */
const batches = (n: Node, from: number): [unknown, unknown][] =>
  n.lines.slice(from).filter((l) => l['msg'] === 'applied wireguard kernel table changes').map((l) => [l['reason'], l['ops']]);

beforeAll(async () => {
  keyDir = mkdtempSync(join(tmpdir(), 'flannel-wgbackend-'));
  topo = await createTopology({ nodes: 2, podMtu: 1420, prefix: 'wgbe' });
  a = await start(topo.nodes[0]!);
  b = await start(topo.nodes[1]!);
  c = leaseOf(Ip4Net.parse('198.19.77.0/24'), '198.18.0.77', publicKeyOf(generatePrivateKey()));
  await a.backend.handleLeaseEvents([added(b.lease), added(c)]);
  await b.backend.handleLeaseEvents([added(a.lease)]);
}, 60_000);

afterAll(async () => {
  for (const n of [a, b]) {
    await n?.backend.close();
    await n?.room.close();
  }
  await topo?.destroy();
  if (keyDir) rmSync(keyDir, { recursive: true, force: true });
});

describe('the first batch', () => {
  test('programs the device\'s key and port, every peer, the Network\'s route and our address: pods talk', async () => {
    expect(await podsTalk(a, b)).toBe(true);
    expect(await podsTalk(b, a)).toBe(true);
    const dev = await a.wg.show(DEV);
    expect([dev.publicKey, dev.listenPort]).toEqual([(a.lease.attrs.backend as { peer: { publicKey: string } }).peer.publicKey, 51820]);
    expect(await peers(a)).toEqual([line(b.lease), line(c)].sort());
    expect((await run(['ip', 'route', 'show', '198.19.0.0/16'], { netns: a.topo.ns })).stdout.trim()).toBe('198.19.0.0/16 dev flannel-wg');
    expect((await run(['ip', '-4', 'addr', 'show', 'dev', DEV], { netns: a.topo.ns })).stdout).toContain(`inet ${a.topo.subnet.toString().replace('/24', '/32')} `);
  });
});

describe('incremental', () => {
  test('a lease changed rewrites its own peer alone, in one op; the other peer\'s session goes on', async () => {
    const session = (await a.wg.show(DEV)).peers.find((p) => p.publicKey === (b.lease.attrs.backend as { peer: { publicKey: string } }).peer.publicKey)!;
    const from = a.lines.length;
    c = leaseOf(c.subnet, '198.18.0.78', (c.attrs.backend as { peer: { publicKey: string } }).peer.publicKey, 51999);
    await a.backend.handleLeaseEvents([added(c)]);
    await a.backend.settled();
    expect(batches(a, from)).toEqual([['event', 1]]);
    expect(await peers(a)).toEqual([line(b.lease), line(c)].sort());
    const after = (await a.wg.show(DEV)).peers.find((p) => p.publicKey === session.publicKey)!;
    expect(after.latestHandshake).toEqual(session.latestHandshake);
    expect(after.rxBytes).toBeGreaterThanOrEqual(session.rxBytes);
    expect(await podsTalk(a, b)).toBe(true);
  });

  test('an unchanged kernel costs no compare: a full pass finds nothing, the next one skips on the digest', async () => {
    expect(await a.backend.resync()).toBe(0);
    const skipped = a.backend.stats()['unchangedPasses']!;
    expect(await a.backend.resync()).toBe(0);
    expect(a.backend.stats()['unchangedPasses']).toBe(skipped + 1);
  });

  test('what others change is put back by the next full pass: a peer removed, one rewritten, one added, the port, the route, the address', async () => {
    const stray = publicKeyOf(generatePrivateKey());
    const keyB = (b.lease.attrs.backend as { peer: { publicKey: string } }).peer.publicKey;
    const keyC = (c.attrs.backend as { peer: { publicKey: string } }).peer.publicKey;
    await run([...a.room.enter, 'wg', 'set', DEV, 'listen-port', '40000', 'peer', keyB, 'remove', 'peer', keyC, 'allowed-ips', '198.19.99.0/24',
      'peer', stray, 'allowed-ips', '198.19.98.0/24', 'endpoint', '198.18.0.98:51820']);
    await run(['ip', 'route', 'del', '198.19.0.0/16', 'dev', DEV], { netns: a.topo.ns });
    await run(['ip', 'addr', 'del', a.topo.subnet.toString().replace('/24', '/32'), 'dev', DEV], { netns: a.topo.ns });
    expect((await run(['ping', '-n', '-c', '1', '-W', '1', b.topo.pod.ip], { netns: a.topo.pod.ns, allowFail: true })).code).not.toBe(0);
    // The address, the port, B's peer, C's peer, the stray peer, the route.
    expect(await a.backend.resync()).toBe(6);
    expect((await a.wg.show(DEV)).listenPort).toBe(51820);
    expect(await peers(a)).toEqual([line(b.lease), line(c)].sort());
    expect(await podsTalk(a, b)).toBe(true);
    expect(await a.backend.resync()).toBe(0);
  });

  test('a node with a new key (its key file lost): its old peer goes, the new one comes, in one pass', async () => {
    const from = a.lines.length;
    const before = c;
    c = leaseOf(c.subnet, '198.18.0.78', publicKeyOf(generatePrivateKey()), 51999);
    await a.backend.handleLeaseEvents([added(c)]);
    await a.backend.settled();
    expect(batches(a, from)).toEqual([['event', 2]]);
    expect(await peers(a)).toEqual([line(b.lease), line(c)].sort());
    expect((await peers(a)).some((l) => l.startsWith((before.attrs.backend as { peer: { publicKey: string } }).peer.publicKey))).toBe(false);
  });

  test('a lease removed takes its peer alone', async () => {
    const from = a.lines.length;
    await a.backend.handleLeaseEvents([removed(c)]);
    await a.backend.settled();
    expect(batches(a, from)).toEqual([['event', 1]]);
    expect(await peers(a)).toEqual([line(b.lease)]);
    expect(await podsTalk(a, b)).toBe(true);
  });
});

describe('the WireGuard path', () => {
  test('a verdict per entry: a peer naming a PSK the path does not hold is refused alone; a device that is not there refuses its batch', async () => {
    const path = new WireguardPath(a.wg, { privateKey: generatePrivateKey(), publicKey: 'unused', presharedKey: PSK });
    const peer = (dev: string, psk: string | null, third: number): KernelOp => ({
      action: 'replace',
      owner: `198.19.${third}.0/24`,
      entry: wgPeer(dev, publicKeyOf(generatePrivateKey()), { allowedIPs: [Ip4Net.parse(`198.19.${third}.0/24`)], endpoint: { ip: 0xc6120000 + third, port: 51820 }, keepalive: 0, psk }),
    });
    const ops = [peer(DEV, wgKeyFingerprint(PSK), 61), peer(DEV, '0123456789abcdef', 62), peer(DEV, null, 63), peer('nosuchwg', null, 64), peer('nosuchwg', null, 65)];
    const verdicts = await path.apply(ops);
    expect(verdicts[0]).toBeNull();
    expect(verdicts[1]).toMatch(/no preshared key here with the fingerprint 0123456789abcdef/);
    expect(verdicts[2]).toBeNull();
    expect(verdicts[3]).toMatch(/nosuchwg/);
    expect(verdicts[4]).toBe(verdicts[3]);
    const have = (await a.wg.show(DEV)).peers.map((p) => p.allowedIPs[0]);
    expect(have).toEqual(expect.arrayContaining(['198.19.61.0/24', '198.19.63.0/24']));
    expect(have).not.toContain('198.19.62.0/24');
    // Ours to remove: the next full pass takes the two the backend never wanted.
    expect(await a.backend.resync()).toBe(2);
    expect(await peers(a)).toEqual([line(b.lease)]);
  });
});
