// The wireguard backend's device layer on two real nodes (network namespaces, each with a private
// /run/wireguard): which implementation runs (on a kernel without the module, wireguard-go, and the
// log says so), the key file, peers set and removed one at a time through wg(8) (allowed IPs,
// endpoint, PSK, keepalive), pod traffic through the tunnel, a wrong PSK, wireguard-go dying and
// being started again, and a clean stop. The test programs addresses and routes by hand: what the
// backend makes of leases is in test/wireguard-backend.test.ts and test/wireguard-cluster.test.ts.
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { WireguardDevice, type WireguardImplementation } from '../src/backend/wireguard/device.js';
import { type NodeKey, generatePrivateKey, loadOrCreateKey, publicKeyOf } from '../src/backend/wireguard/keys.js';
import { WgClient, type WgPeerConfig } from '../src/routes/wg.js';
import { formatIp4 } from '../src/common/ip4.js';
import { ip, ipBatch } from '../src/routes/ip.js';
import { capturingLogger } from './harness/log-capture.js';
import { run, waitFor } from '../testbed/netns.js';
import { createTopology, type TopoNode, type Topology } from '../testbed/udp-topology.js';
import { type WireguardRoom, probeKernelWireguard, wireguardRoom } from './harness/wireguard.js';

const DEV = 'flannel-wg';
const PORT = 51820;
const MTU = 1500 - 80; // upstream: the device gets the underlay MTU less WireGuard's 80 bytes

interface WgNode {
  topo: TopoNode;
  room: WireguardRoom;
  wg: WgClient;
  key: NodeKey;
  dev: WireguardDevice;
  logLines: Record<string, unknown>[];
  recreated: number;
}

let topo: Topology;
let keyDir: string;
let a: WgNode;
let b: WgNode;
/** What `ip link add type wireguard` does on this machine's kernel, probed in a scratch namespace. */
let expected: WireguardImplementation;

async function openNode(topoNode: TopoNode): Promise<WgNode> {
  const room = await wireguardRoom(topoNode.ns);
  const { log, lines } = capturingLogger();
  const node = { topo: topoNode, room, wg: new WgClient({ enter: room.enter }), logLines: lines, recreated: 0 } as WgNode;
  node.key = loadOrCreateKey(join(keyDir, `node${topoNode.index}`, 'wgkey'));
  node.dev = await WireguardDevice.open({ name: DEV, mtu: MTU, log, netns: topoNode.ns, enter: room.enter, onRecreated: () => node.recreated++ });
  await node.wg.setInterface(DEV, node.key.privateKey, PORT);
  // What the backend will program through the kernel machinery: our address, up, the Network's route.
  await ipBatch(
    [
      ['addr', 'add', `${formatIp4(topoNode.subnet.ip)}/32`, 'dev', DEV],
      ['link', 'set', 'dev', DEV, 'up'],
      ['route', 'replace', '198.19.0.0/16', 'dev', DEV, 'scope', 'link'],
    ],
    { netns: topoNode.ns },
  );
  return node;
}

function peerOf(node: WgNode, overrides: Partial<WgPeerConfig> = {}): WgPeerConfig {
  return {
    publicKey: node.key.publicKey,
    allowedIPs: [node.topo.subnet.toString()],
    endpoint: { ip: node.topo.ip, port: PORT },
    presharedKey: null,
    persistentKeepalive: 0,
    ...overrides,
  };
}

/** One ping from a's pod to b's pod (through both nodes' devices). */
async function podsTalk(from: WgNode = a, to: WgNode = b, timeoutS = 1): Promise<boolean> {
  const res = await run(['ping', '-n', '-c', '1', '-W', String(timeoutS), to.topo.pod.ip], { netns: from.topo.pod.ns, allowFail: true });
  return res.code === 0;
}

beforeAll(async () => {
  expected = await probeKernelWireguard();
  keyDir = mkdtempSync(join(tmpdir(), 'flannel-wgkeys-'));
  topo = await createTopology({ nodes: 2, podMtu: MTU, prefix: 'wgdev' });
  a = await openNode(topo.nodes[0]!);
  b = await openNode(topo.nodes[1]!);
}, 60_000);

afterAll(async () => {
  for (const n of [a, b]) {
    await n?.dev.close({ remove: true }).catch(() => {});
    await n?.room.close();
  }
  await topo?.destroy();
  if (keyDir) rmSync(keyDir, { recursive: true, force: true });
});

describe('the device', () => {
  test('the implementation this kernel offers runs, and the log says which', async () => {
    expect(a.dev.implementation).toBe(expected);
    const said = a.logLines.find((l) => typeof l['msg'] === 'string' && (l['msg'] as string).startsWith('wireguard:') && l['implementation'] === expected);
    expect(said?.['msg']).toBe(
      expected === 'kernel' ? 'wireguard: using the kernel module' : 'wireguard: the kernel has no wireguard module; running wireguard-go (userspace WireGuard)',
    );
    const [link] = JSON.parse((await ip(['-d', '-j', 'link', 'show', 'dev', DEV], { netns: a.topo.ns })) as string) as { mtu: number; linkinfo?: { info_kind?: string } }[];
    expect(link?.mtu).toBe(MTU);
    expect(link?.linkinfo?.info_kind).toBe(expected === 'kernel' ? 'wireguard' : 'tun');
    if (expected === 'wireguard-go') expect(a.dev.pid).toBeGreaterThan(0);
  });

  test('each node has its own key file (mode 0600) and its device carries that key: WireGuard derives the same public key as we do', async () => {
    for (const n of [a, b]) {
      expect(statSync(n.key.file).mode & 0o777).toBe(0o600);
      const state = await n.wg.show(DEV);
      expect(state.publicKey).toBe(n.key.publicKey);
      expect(state.listenPort).toBe(PORT);
    }
    expect(a.key.publicKey).not.toBe(b.key.publicKey);
  });
});

describe('peers', () => {
  test('each node the other as its peer: pods talk through the tunnel, handshake and bytes on both sides', async () => {
    await a.wg.setPeers(DEV, [peerOf(b, { persistentKeepalive: 25 })]);
    await b.wg.setPeers(DEV, [peerOf(a)]);
    expect(await waitFor(() => podsTalk(), 15_000)).toBe(true);
    expect(await podsTalk(b, a)).toBe(true);
    const seen = await a.wg.show(DEV);
    expect(seen.peers).toHaveLength(1);
    expect(seen.peers[0]).toMatchObject({
      publicKey: b.key.publicKey,
      hasPresharedKey: false,
      endpoint: `${b.topo.ip}:${PORT}`,
      allowedIPs: [b.topo.subnet.toString()],
      persistentKeepalive: 25,
    });
    expect(seen.peers[0]!.latestHandshake).not.toBeNull();
    expect(seen.peers[0]!.rxBytes).toBeGreaterThan(0);
    expect(seen.peers[0]!.txBytes).toBeGreaterThan(0);
  });

  test('peers change one at a time: adding and removing another peer leaves the first untouched; a changed peer gets exactly its new allowed IPs, endpoint and keepalive', async () => {
    const other = publicKeyOf(generatePrivateKey());
    const before = (await a.wg.show(DEV)).peers[0]!;
    await a.wg.setPeers(DEV, [{ publicKey: other, allowedIPs: ['198.19.50.0/24', '198.19.51.0/24'], endpoint: { ip: '198.18.0.50', port: 51999 }, presharedKey: null, persistentKeepalive: 0 }]);
    let peers = (await a.wg.show(DEV)).peers;
    expect(peers.map((p) => p.publicKey).sort()).toEqual([b.key.publicKey, other].sort());
    const first = peers.find((p) => p.publicKey === b.key.publicKey)!;
    // Same session: the handshake was not redone and the counters went on.
    expect(first.latestHandshake).toEqual(before.latestHandshake);
    expect(first.allowedIPs).toEqual(before.allowedIPs);
    expect(await podsTalk()).toBe(true);

    // The other peer changes: its allowed IPs are replaced (not added to), its endpoint and keepalive too.
    await a.wg.setPeers(DEV, [{ publicKey: other, allowedIPs: ['198.19.52.0/24'], endpoint: { ip: '198.18.0.51', port: 51998 }, presharedKey: null, persistentKeepalive: 10 }]);
    peers = (await a.wg.show(DEV)).peers;
    expect(peers.find((p) => p.publicKey === other)).toMatchObject({ allowedIPs: ['198.19.52.0/24'], endpoint: '198.18.0.51:51998', persistentKeepalive: 10 });

    await a.wg.removePeers(DEV, [other]);
    peers = (await a.wg.show(DEV)).peers;
    expect(peers.map((p) => p.publicKey)).toEqual([b.key.publicKey]);
    expect(await podsTalk()).toBe(true);
  });

  test("a peer's allowed IPs decide what reaches it: without its subnet, pod traffic stops; with it, it resumes", async () => {
    await a.wg.setPeers(DEV, [peerOf(b, { allowedIPs: ['198.19.99.0/24'] })]);
    expect(await podsTalk()).toBe(false);
    await a.wg.setPeers(DEV, [peerOf(b)]);
    expect(await waitFor(() => podsTalk(), 10_000)).toBe(true);
  });

  test('a PSK on one side only: no new session, pods cut off; the same PSK on both: they talk again', async () => {
    const psk = generatePrivateKey(); // any 32 random bytes in WireGuard's base64
    // Removing and re-adding the peer drops the session, so the next packet needs a new handshake.
    await a.wg.removePeers(DEV, [b.key.publicKey]);
    await b.wg.removePeers(DEV, [a.key.publicKey]);
    await a.wg.setPeers(DEV, [peerOf(b, { presharedKey: psk })]);
    await b.wg.setPeers(DEV, [peerOf(a)]);
    expect((await a.wg.show(DEV)).peers[0]!.hasPresharedKey).toBe(true);
    expect(await podsTalk(a, b, 2)).toBe(false);
    expect(await podsTalk(b, a, 2)).toBe(false);
    expect((await a.wg.show(DEV)).peers[0]!.latestHandshake).toBeNull();

    await b.wg.setPeers(DEV, [peerOf(a, { presharedKey: psk })]);
    expect(await waitFor(() => podsTalk(), 20_000)).toBe(true);
    // And a PSK removed again (peerOf has none): written as WireGuard's zero key, which means none.
    await a.wg.setPeers(DEV, [peerOf(b)]);
    expect((await a.wg.show(DEV)).peers[0]!.hasPresharedKey).toBe(false);
    await b.wg.setPeers(DEV, [peerOf(a)]);
  });
});

describe('wireguard-go supervision', () => {
  test('wireguard-go killed: started again, logged, and the backend told the device is new (empty)', async () => {
    if (expected !== 'wireguard-go') return; // the kernel module has no process to supervise
    const pid = a.dev.pid!;
    process.kill(pid, 'SIGKILL');
    expect(await waitFor(() => a.recreated === 1, 15_000)).toBe(true);
    expect(a.dev.pid).not.toBe(pid);
    expect(a.logLines.some((l) => l['msg'] === 'wireguard: wireguard-go exited; starting it again' && l['signal'] === 'SIGKILL')).toBe(true);
    const state = await a.wg.show(DEV);
    expect(state.peers).toEqual([]);
    expect(state.publicKey).toBeNull(); // no key yet: the backend applies everything again
    // Applying it again restores traffic (the backend does it with a full pass on onRecreated).
    await a.wg.setInterface(DEV, a.key.privateKey, PORT);
    await a.wg.setPeers(DEV, [peerOf(b)]);
    await ipBatch(
      [
        ['addr', 'add', `${formatIp4(a.topo.subnet.ip)}/32`, 'dev', DEV],
        ['link', 'set', 'dev', DEV, 'up'],
        ['route', 'replace', '198.19.0.0/16', 'dev', DEV, 'scope', 'link'],
      ],
      { netns: a.topo.ns },
    );
    expect(await waitFor(() => podsTalk(), 20_000)).toBe(true);
  });
});

describe('stop', () => {
  test('close(): wireguard-go exits and its device is gone; a kernel device stays unless removed', async () => {
    const pid = a.dev.pid;
    await a.dev.close();
    const links = await run(['ip', '-n', a.topo.ns, 'link', 'show', 'dev', DEV], { allowFail: true });
    if (expected === 'wireguard-go') {
      expect(links.code).not.toBe(0);
      expect(() => process.kill(pid!, 0)).toThrow();
    } else {
      expect(links.code).toBe(0);
    }
    // The key stays: a restart publishes the same public key.
    expect(loadOrCreateKey(a.key.file)).toMatchObject({ publicKey: a.key.publicKey, created: false });
  });
});
