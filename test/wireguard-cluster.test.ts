// The wireguard backend on one 3-node dual-stack namespace cluster of real daemons (Mode separate, a
// PSK; on a kernel without the module, wireguard-go runs), started at once, one cluster for every check:
//  - every pod pair pings, IPv4 through flannel-wg and IPv6 through flannel-wg-v6; each node's peers are
//    the other two, from their leases (written byte for byte as upstream writes them);
//  - a capture on the underlay bridge while pods ping holds only WireGuard's UDP (51820, 51821) between
//    nodes, and never the pods' payload, which a capture beside the pods shows in clear;
//  - flannelctl leases shows the public keys; /metrics has the peers, handshakes and bytes (promtool);
//  - wireguard-go killed: started again, and a full pass puts back key, port, peers, addresses, routes;
//  - a node restarted keeps its public key; its peers resume, and no other node changes anything;
//  - a wrong PSK, then none, on one node: that node is cut off, the others talk as before;
//  - a lease with another node's public key is refused on every node (the older key keeps it);
//  - a node leaving takes its peers with it on every node;
// and on a second, 2-node cluster, Mode ipv6: one device for both families, nodes reached over IPv6.
// Needs `npm run build`.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { loadOrCreateKey } from '../src/backend/wireguard/keys.js';
import { wgKeyFingerprint } from '../src/common/wg-key.js';
import { createCluster, dualSubnetsOf, repoPath, type Cluster, type ClusterNode, type Pod } from '../testbed/cluster.js';
import { wireguardKeyPath } from '../testbed/flanneld.js';
import { run, waitFor } from '../testbed/netns.js';
import { logSize, readLog, waitForLog } from './harness/resilience.js';
import { daemonDevice, peerLines, probeKernelWireguard } from './harness/wireguard.js';

const PREFIX = '/coreos.com/network';
const PSK = 'FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=';
const OTHER_PSK = 'Y2hhbmdlZCBwcmVzaGFyZWQga2V5IGZvciB0ZXN0cyE=';
const CONFIG = { Network: '198.19.0.0/16', EnableIPv6: true, IPv6Network: '2001:2:1::/48', Backend: { Type: 'wireguard', PSK } };
const HEALTHZ = 10269;
/** The pods' ping payload: found in clear beside the pods, never on the underlay. */
const PATTERN = 'f1a77e1c0ffee0dd';

let cluster: Cluster;
let n1: ClusterNode;
let n2: ClusterNode;
let n3: ClusterNode;

const pod = (n: ClusterNode): Pod => n.pods[0]!;
const publicKey = (n: ClusterNode): string => loadOrCreateKey(wireguardKeyPath(n.logFile)).publicKey;

/** Every lease in etcd: key name → value. */
async function leases(of: Cluster = cluster): Promise<Map<string, string>> {
  const res = JSON.parse(await of.etcdctl(['get', '--prefix', `${PREFIX}/subnets/`, '-w', 'json'])) as { kvs?: { key: string; value: string }[] };
  return new Map((res.kvs ?? []).map((kv) => [Buffer.from(kv.key, 'base64').toString().slice(`${PREFIX}/subnets/`.length), Buffer.from(kv.value, 'base64').toString()]));
}

/** The peers a node should have on each device: every other running node, from its env file and key. */
async function expectedPeers(me: ClusterNode, others: ClusterNode[], psk: string | null = PSK): Promise<{ v4: string[]; v6: string[] }> {
  const id = psk === null ? '-' : wgKeyFingerprint(psk);
  const v4: string[] = [];
  const v6: string[] = [];
  for (const o of others.filter((x) => x !== me)) {
    const { v4: s4, v6: s6 } = await dualSubnetsOf(o);
    v4.push(`${publicKey(o)} psk=${id} endpoint=${o.ip}:51820 allowed=${s4} keepalive=0`);
    v6.push(`${publicKey(o)} psk=${id} endpoint=[${o.ip6}]:51821 allowed=${s6} keepalive=0`);
  }
  return { v4: v4.sort(), v6: v6.sort() };
}

async function devicePeers(n: ClusterNode): Promise<{ v4: string[]; v6: string[] }> {
  return { v4: peerLines(await daemonDevice(n, 'flannel-wg')), v6: peerLines(await daemonDevice(n, 'flannel-wg-v6')) };
}

/** Pings pod to pod over both families until both answer (within `timeoutMs`); false if either never does. */
async function talk(a: ClusterNode, b: ClusterNode, timeoutMs = 20_000): Promise<boolean> {
  for (const dst of [pod(b).ip, pod(b).ip6!]) {
    if (!(await waitFor(() => cluster.ping(pod(a), dst, { timeoutS: 1 }), timeoutMs, 0))) return false;
  }
  return true;
}

/** The pairs (either way, both families) between `a` and `others` where an echo got an answer: two echoes each, all at once. */
async function answered(a: ClusterNode, others: ClusterNode[]): Promise<string[]> {
  const tries = others.flatMap((b) => [[a, b], [b, a]] as const).flatMap(([x, y]) => [pod(y).ip, pod(y).ip6!].map((dst) => ({ x, y, dst })));
  const got = await Promise.all(tries.map(({ x, dst }) => cluster.ping(pod(x), dst, { count: 2, timeoutS: 2 })));
  return tries.filter((_, i) => got[i]).map(({ x, y, dst }) => `node ${x.index} -> node ${y.index} (${dst})`);
}

async function metrics(n: ClusterNode): Promise<string> {
  return (await run(['curl', '-sf', `http://127.0.0.1:${HEALTHZ}/metrics`], { netns: n.ns })).stdout;
}

function metric(text: string, series: string): number | null {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? null : Number(line.slice(series.length + 1));
}

async function restart(n: ClusterNode): Promise<void> {
  await cluster.stopDaemon(n);
  await cluster.startDaemon(n);
}

beforeAll(async () => {
  cluster = await createCluster({ nodes: 3, ipv6: true, config: CONFIG, daemonArgs: [`--healthz-port=${HEALTHZ}`] });
  [n1, n2, n3] = cluster.nodes as [ClusterNode, ClusterNode, ClusterNode];
}, 120_000);

afterAll(async () => {
  await cluster?.destroy();
});

describe('three nodes started at once', () => {
  test('every pod pair pings over both families, through flannel-wg and flannel-wg-v6, run by the implementation this kernel has', async () => {
    for (const a of cluster.nodes) for (const b of cluster.nodes) if (a !== b) expect(await talk(a, b), `${a.index} -> ${b.index}\n${cluster.logTail(a)}`).toBe(true);
    const implementation = await probeKernelWireguard();
    const said = implementation === 'kernel' ? 'wireguard: using the kernel module' : 'wireguard: the kernel has no wireguard module; running wireguard-go (userspace WireGuard)';
    for (const n of cluster.nodes) {
      expect(readLog(n.logFile).filter((l) => l.msg === said).map((l) => l['device']).sort()).toEqual(['flannel-wg', 'flannel-wg-v6']);
      expect((await run(['ip', '-4', 'route', 'show', '198.19.0.0/16'], { netns: n.ns })).stdout.trim()).toBe('198.19.0.0/16 dev flannel-wg');
      expect((await run(['ip', '-6', 'route', 'show', '2001:2:1::/48'], { netns: n.ns })).stdout).toMatch(/^2001:2:1::\/48 dev flannel-wg-v6 /);
      // Pods get the devices' MTU: the underlay's 1500 less WireGuard's 80.
      expect((await n.env())['FLANNEL_MTU']).toBe('1420');
    }
  });

  test('each node has the other two as peers, from their leases; the leases are upstream\'s bytes, with the key kept in each node\'s key file', async () => {
    const values = await leases();
    for (const n of cluster.nodes) {
      const { v4, v6 } = await dualSubnetsOf(n);
      const key = publicKey(n);
      const value = values.get(`${v4.toKey()}&${v6.toKey()}`);
      const identity = (JSON.parse(value!) as { NodeIdentity: string }).NodeIdentity;
      expect(value).toBe(
        `{"PublicIP":"${n.ip}","PublicIPv6":"${n.ip6}","BackendType":"wireguard","BackendData":{"PublicKey":"${key}","Port":51820},`
        + `"BackendV6Data":{"PublicKey":"${key}","Port":51821},"NodeIdentity":"${identity}"}`,
      );
      const dev4 = await daemonDevice(n, 'flannel-wg');
      const dev6 = await daemonDevice(n, 'flannel-wg-v6');
      expect([dev4?.publicKey, dev4?.listenPort, dev6?.publicKey, dev6?.listenPort]).toEqual([key, 51820, key, 51821]);
      expect(await devicePeers(n)).toEqual(await expectedPeers(n, cluster.nodes));
    }
  });

  test('the underlay carries only WireGuard between nodes: UDP 51820 (IPv4) and 51821 (IPv6); the pods\' payload is seen beside the pods, never on the wire', async () => {
    const wire = join(cluster.tmpDir, 'underlay.pcap');
    const beside = join(cluster.tmpDir, 'pods.pcap');
    // Between nodes: everything but etcd's traffic with the hub, and IPv6 neighbour discovery and multicast.
    // Immediate mode: each packet is handed over as it comes, so none is still buffered when the capture stops.
    const captures = [
      spawn('ip', ['netns', 'exec', cluster.hubNs, 'tcpdump', '-i', 'br0', '-n', '--immediate-mode', '-w', wire, '(ip and not host 198.18.0.254) or (ip6 and not icmp6 and not ip6 multicast)'], { stdio: ['ignore', 'ignore', 'pipe'] }),
      spawn('ip', ['netns', 'exec', n1.ns, 'tcpdump', '-i', 'cni0', '-n', '--immediate-mode', '-w', beside, 'icmp or icmp6'], { stdio: ['ignore', 'ignore', 'pipe'] }),
    ];
    try {
      await Promise.all(captures.map((c) => new Promise<void>((resolve, reject) => {
        c.stderr!.on('data', (d: Buffer) => d.toString().includes('listening on') && resolve());
        c.once('exit', (code) => reject(new Error(`tcpdump exited ${code}`)));
      })));
      for (const a of cluster.nodes) {
        for (const b of cluster.nodes) {
          if (a === b) continue;
          for (const dst of [pod(b).ip, pod(b).ip6!]) {
            const res = await run(['ping', '-n', '-q', '-c', '3', '-i', '0.2', '-W', '2', '-p', PATTERN, dst], { netns: pod(a).ns, allowFail: true });
            expect(res.code, `${a.index} -> ${dst}`).toBe(0);
          }
        }
      }
    } finally {
      for (const c of captures) {
        const exited = new Promise((resolve) => c.once('exit', resolve));
        c.kill('SIGINT');
        await exited;
      }
    }
    const packets = (await run(['tcpdump', '-r', wire, '-n'])).stdout.trim().split('\n');
    const v4 = packets.filter((l) => / IP 198\.18\.0\.\d+\.51820 > 198\.18\.0\.\d+\.51820: UDP, length \d+$/.test(l));
    const v6 = packets.filter((l) => / IP6 2001:2::\d+\.51821 > 2001:2::\d+\.51821: UDP, length \d+$/.test(l));
    expect(packets.filter((l) => !v4.includes(l) && !v6.includes(l))).toEqual([]);
    // 6 pairs × 3 echoes each way, per family: every one crossed the wire, encrypted.
    expect(v4.length).toBeGreaterThanOrEqual(36);
    expect(v6.length).toBeGreaterThanOrEqual(36);
    const pattern = Buffer.from(PATTERN, 'hex');
    expect(readFileSync(wire).indexOf(pattern)).toBe(-1);
    expect(readFileSync(beside).indexOf(pattern)).toBeGreaterThan(0);
  });

  test('flannelctl leases shows each node\'s public key; /metrics has its peers, handshakes and bytes, in the Prometheus format', async () => {
    const ctl = (args: string[]) => run([repoPath('bin', 'flannelctl'), `--etcd-endpoints=${cluster.etcdEndpoint}`, ...args], { netns: n1.ns });
    const table = (await ctl(['leases'])).stdout.split('\n');
    expect(table[0]).toMatch(/^SUBNET\s+IPV6 SUBNET\s+PUBLIC IP\s+PUBLIC IPV6\s+BACKEND\s+PUBLIC KEY\s+EXPIRES$/);
    for (const n of cluster.nodes) {
      const { v4 } = await dualSubnetsOf(n);
      expect(table.find((l) => l.startsWith(`${v4} `))).toMatch(new RegExp(`\\swireguard\\s+${publicKey(n).replace(/[+/]/g, '\\$&')}\\s`));
    }
    const json = JSON.parse((await ctl(['leases', '--json'])).stdout) as { leases: { publicIP: string; publicKey?: string; vtepMAC: string | null }[] };
    expect(json.leases.map((l) => [l.publicIP, l.publicKey, l.vtepMAC]).sort()).toEqual(cluster.nodes.map((n) => [n.ip, publicKey(n), null]).sort());

    for (const n of cluster.nodes) {
      const text = await metrics(n);
      for (const dev of ['flannel-wg', 'flannel-wg-v6']) {
        expect(metric(text, `flannel_wireguard_peers{device="${dev}"}`), dev).toBe(2);
        // Every pair pinged above, within the last 3 minutes.
        expect(metric(text, `flannel_wireguard_peers_handshake_stale{device="${dev}"}`), dev).toBe(0);
        for (const direction of ['rx', 'tx']) expect(metric(text, `flannel_wireguard_bytes_total{device="${dev}",direction="${direction}"}`)).toBeGreaterThan(1000);
      }
      expect(metric(text, 'flannel_backend_peers{backend="wireguard"}')).toBe(2);
      const check = await run(['promtool', 'check', 'metrics'], { input: text, allowFail: true });
      expect(check.code, check.stdout + check.stderr).toBe(0);
      // Nothing refused, and the periodic full passes found nothing to repair: what was programmed stays as it is.
      expect(readLog(n.logFile).filter((l) => /kernel refused|resync repaired|kernel update failed/.test(l.msg)).map((l) => l.msg), `node ${n.index}`).toEqual([]);
    }
  });
});

describe('recovery', () => {
  test('wireguard-go killed (or a kernel device deleted): it runs again, and key, port, peers, addresses and routes are all put back', async () => {
    const before = await devicePeers(n1);
    const mark = logSize(n1.logFile);
    if ((await probeKernelWireguard()) === 'wireguard-go') {
      const pid = Number((await run(['pgrep', '-P', String(n1.pid), '-f', 'wireguard-go -f flannel-wg$'])).stdout.trim());
      expect(pid).toBeGreaterThan(0);
      process.kill(pid, 'SIGKILL');
      expect(await waitForLog(n1.logFile, (l) => l.msg === 'wireguard: device recreated; applying its key, port, peers, addresses and routes again', 15_000, mark)).not.toBeNull();
    } else {
      await run(['ip', 'link', 'del', 'flannel-wg'], { netns: n1.ns });
    }
    for (const other of [n2, n3]) {
      expect(await talk(n1, other), cluster.logTail(n1)).toBe(true);
      expect(await talk(other, n1)).toBe(true);
    }
    expect(await devicePeers(n1)).toEqual(before);
    expect((await daemonDevice(n1, 'flannel-wg'))?.publicKey).toBe(publicKey(n1));
    const addrs = (await run(['ip', '-4', 'addr', 'show', 'dev', 'flannel-wg'], { netns: n1.ns })).stdout;
    expect(addrs).toContain(`inet ${(await dualSubnetsOf(n1)).v4.toString().replace('/24', '/32')} `);
  });

  test('a node restarted keeps its public key: its peers resume, and no other node changes anything', async () => {
    const key = publicKey(n2);
    const others = [n1, n3];
    const peersBefore = await Promise.all(others.map(devicePeers));
    const marks = others.map((n) => logSize(n.logFile));
    await restart(n2);
    expect(publicKey(n2)).toBe(key);
    expect(readLog(n2.logFile).filter((l) => l.msg === 'wireguard: using the key pair kept in the key file').at(-1)?.['publicKey']).toBe(key);
    for (const other of others) {
      expect(await talk(n2, other), cluster.logTail(n2)).toBe(true);
      expect(await talk(other, n2)).toBe(true);
    }
    expect(await Promise.all(others.map(devicePeers))).toEqual(peersBefore);
    others.forEach((n, i) => {
      const changes = readLog(n.logFile, marks[i]).filter((l) => /subnet/.test(l.msg) && /adding|updating|removing/.test(l.msg));
      expect(changes, `node ${n.index}`).toEqual([]);
    });
  });

  test('a wrong PSK on one node, then none: that node cannot talk to any other, and the others talk as before', async () => {
    const configKey = `${PREFIX}/config`;
    for (const psk of [OTHER_PSK, null]) {
      const backend = psk === null ? { Type: 'wireguard' } : { Type: 'wireguard', PSK: psk };
      await cluster.etcdctl(['put', configKey, JSON.stringify({ ...CONFIG, Backend: backend })]);
      // The running nodes keep their config (a change needs a restart); node 3 restarts with the new one.
      await restart(n3);
      expect(await waitFor(async () => (await devicePeers(n3)).v4.length === 2, 10_000)).toBe(true);
      expect(await devicePeers(n3)).toEqual(await expectedPeers(n3, cluster.nodes, psk));
      expect(await answered(n3, [n1, n2]), `${psk === null ? 'no' : 'another'} PSK`).toEqual([]);
      expect(await talk(n1, n2, 5000)).toBe(true);
      expect(await talk(n2, n1, 5000)).toBe(true);
      // No session ever came up on node 3's side.
      for (const dev of ['flannel-wg', 'flannel-wg-v6']) expect((await daemonDevice(n3, dev))!.peers.every((p) => p.latestHandshake === null), dev).toBe(true);
    }
    await cluster.etcdctl(['put', configKey, JSON.stringify(CONFIG)]);
    await restart(n3);
    for (const other of [n1, n2]) {
      expect(await talk(n3, other)).toBe(true);
      expect(await talk(other, n3)).toBe(true);
    }
  });
});

describe('identity', () => {
  test('a lease carrying another node\'s public key is refused on every node, counted and said once; the older lease keeps the key', async () => {
    const victim = publicKey(n1);
    const { v4: s1 } = await dualSubnetsOf(n1);
    const marks = cluster.nodes.map((n) => logSize(n.logFile));
    const peersBefore = await Promise.all([n2, n3].map(devicePeers));
    const rogue = '198.19.250.0-24';
    expect([...(await leases()).keys()].some((k) => k.startsWith('198.19.250.0-') || k.startsWith('198.19.251.0-'))).toBe(false);
    for (let i = 0; i < 3; i++) {
      await cluster.etcdctl(['put', `${PREFIX}/subnets/${rogue}`, JSON.stringify({
        PublicIP: '198.18.0.77', PublicIPv6: null, BackendType: 'wireguard', BackendData: { PublicKey: victim, Port: 51820 + i },
      })]);
    }
    for (const [i, n] of cluster.nodes.entries()) {
      const line = await waitForLog(n.logFile, (l) => l.msg === 'skipping a lease whose WireGuard public key belongs to another node', 10_000, marks[i]);
      expect(line, `node ${n.index}`).not.toBeNull();
      expect(line!['code']).toBe('duplicate_public_key');
      // Node 1 refuses its own key; the others leave it with the older lease, node 1's.
      expect(line!['reason']).toMatch(n === n1 ? /this node's own WireGuard public key/ : new RegExp(`belongs to the older key .*${s1.toKey()}`));
    }
    for (const [i, n] of cluster.nodes.entries()) {
      expect(await waitFor(async () => metric(await metrics(n), 'flannel_leases_invalid_total{reason="duplicate_public_key"}') === 3, 10_000), `node ${n.index}`).toBe(true);
      expect(readLog(n.logFile, marks[i]).filter((l) => l['code'] === 'duplicate_public_key')).toHaveLength(1);
    }
    expect(await Promise.all([n2, n3].map(devicePeers))).toEqual(peersBefore);
    expect(await talk(n2, n1)).toBe(true);
    expect(await talk(n3, n1)).toBe(true);
    await cluster.etcdctl(['del', `${PREFIX}/subnets/${rogue}`]);
  });

  test('a node leaving takes its peers with it on every node; the others still talk', async () => {
    const key = publicKey(n3);
    const { v4, v6 } = await dualSubnetsOf(n3);
    await cluster.stopDaemon(n3);
    await cluster.etcdctl(['del', `${PREFIX}/subnets/${v4.toKey()}&${v6.toKey()}`]);
    for (const n of [n1, n2]) {
      const gone = await waitFor(async () => {
        const { v4: p4, v6: p6 } = await devicePeers(n);
        return p4.length === 1 && p6.length === 1 && ![...p4, ...p6].some((l) => l.startsWith(key));
      }, 10_000);
      expect(gone, `node ${n.index}: ${JSON.stringify(await devicePeers(n))}`).toBe(true);
      expect(await devicePeers(n)).toEqual(await expectedPeers(n, [n1, n2]));
    }
    expect(await talk(n1, n2)).toBe(true);
    expect(await talk(n2, n1)).toBe(true);
  });
});

describe('Mode ipv6: one device for both families', () => {
  let single: Cluster;

  beforeAll(async () => {
    single = await createCluster({ nodes: 2, ipv6: true, config: { ...CONFIG, Backend: { Type: 'wireguard', PSK, Mode: 'ipv6' } } });
  }, 120_000);

  afterAll(async () => {
    await single?.destroy();
  });

  test('pods ping over both families through flannel-wg alone, each node a peer with both subnets reached at its IPv6 address and ListenPort', async () => {
    const [a, b] = single.nodes as [ClusterNode, ClusterNode];
    for (const [x, y] of [[a, b], [b, a]] as const) {
      for (const dst of [y.pods[0]!.ip, y.pods[0]!.ip6!]) expect(await waitFor(() => single.ping(x.pods[0]!, dst, { timeoutS: 1 }), 20_000, 0), `${x.index} -> ${dst}`).toBe(true);
    }
    for (const [x, y] of [[a, b], [b, a]] as const) {
      expect(await daemonDevice(x, 'flannel-wg-v6')).toBeNull();
      const { v4, v6 } = await dualSubnetsOf(y);
      expect(peerLines(await daemonDevice(x, 'flannel-wg'))).toEqual([
        `${publicKey(y)} psk=${wgKeyFingerprint(PSK)} endpoint=[${y.ip6}]:51820 allowed=${v4},${v6} keepalive=0`,
      ]);
      expect((await run(['ip', '-6', 'route', 'show', '2001:2:1::/48'], { netns: x.ns })).stdout).toMatch(/^2001:2:1::\/48 dev flannel-wg /);
    }
    // The lease names the one device's port for IPv6 too: the port it listens on.
    const value = (await leases(single)).get(`${(await dualSubnetsOf(a)).v4.toKey()}&${(await dualSubnetsOf(a)).v6.toKey()}`);
    expect(value).toContain(`"BackendV6Data":{"PublicKey":"${publicKey(a)}","Port":51820}`);
  });
});
