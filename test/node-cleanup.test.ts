// flannelctl node cleanup on a node that ran every backend in turn: vxlan (dual stack), udp and host-gw
// (dual stack) with iptables rules, then host-gw in nftables mode, each with --ip-masq, stopped the way a
// node is stopped (SIGTERM leaves the kernel state in place). nftables mode removes the iptables rules
// at start, so iptables rules are then written again by the daemon's own iptables writer (as a daemon
// stopped halfway through a switch of modes leaves them); a wireguard-go left running on flannel-wg (as
// one outliving whatever started it would be), a TUN device named flannel-wg-v6, and the CNI plugin's
// installation are made here as they would be. After the cleanup, the wireguard-go has exited and `ip link`, `ip route`, `bridge fdb`, `iptables-save`,
// `ip6tables-save`, `nft list ruleset` and the file system show nothing of ours, the operator's own
// routes are still there, the node's lease is gone from etcd, and a second run finds nothing.
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCluster, repoPath, type Cluster, type ClusterNode } from '../testbed/cluster.js';
import { netnsPids, run, waitFor } from '../testbed/netns.js';
import { alive } from '../testbed/cluster.js';
import { type WireguardRoom, wireguardRoom } from './harness/wireguard.js';
import { Ip4Net } from '../src/common/ip4.js';
import { Ip6Net } from '../src/common/ip6.js';
import { ruleWriter } from '../src/netfilter/index.js';

const NETWORK = '198.19.0.0/17';
const NETWORK6 = '2001:2:1::/56';
const vxlan = { Network: NETWORK, EnableIPv6: true, IPv6Network: NETWORK6, Backend: { Type: 'vxlan' } };
const udp = { Network: NETWORK, Backend: { Type: 'udp' } };
const hostgw = { Network: NETWORK, EnableIPv6: true, IPv6Network: NETWORK6, Backend: { Type: 'host-gw' } };
const hostgwNftables = { ...hostgw, EnableNFTables: true };
// The operator's routes: one outside the network, one inside it but not of the subnet length. Both stay.
const OPERATOR_ROUTES = [['198.19.200.0/24', '198.18.0.254'], ['198.19.64.0/25', '198.18.0.254']] as const;

let cluster: Cluster;
let node: ClusterNode;
let cni: { bin: string; conf: string; data: string };
let room: WireguardRoom;
let wireguardGo: number;

async function inNode(argv: string[]): Promise<string> {
  return (await run(argv, { netns: node.ns })).stdout;
}

async function flannelctl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return run([repoPath('bin', 'flannelctl'), ...args], { netns: node.ns, allowFail: true });
}

function cleanupArgs(): string[] {
  return ['node', 'cleanup', `--subnet-file=${node.subnetFile}`, `--cni-bin-dir=${cni.bin}`, `--cni-conf-dir=${cni.conf}`,
    `--cni-data-dir=${cni.data}`, '--release-lease', `--etcd-endpoints=${cluster.etcdEndpoint}`];
}

/** Runs both nodes' daemons with `config`, waits for node 1 to have programmed its peer, stops them. */
async function runBackend(config: Record<string, unknown>, programmed: () => Promise<boolean>): Promise<void> {
  await cluster.etcdctl(['put', '/coreos.com/network/config', JSON.stringify(config)]);
  await Promise.all(cluster.nodes.map((n) => cluster.startDaemon(n)));
  expect(await waitFor(programmed, 20_000), cluster.logTail(node)).toBe(true);
  for (const n of cluster.nodes) await cluster.stopDaemon(n, 'SIGTERM');
}

beforeAll(async () => {
  cluster = await createCluster({ nodes: 2, ipv6: true, config: vxlan, startDaemons: false, daemonArgs: ['--ip-masq'] });
  node = cluster.nodes[0]!;
  const peer = cluster.nodes[1]!;
  // vxlan, dual stack: both devices, routes, neighbours and FDB entries for the peer.
  await runBackend(vxlan, async () => (await inNode(['bridge', 'fdb', 'show', 'dev', 'flannel-v6.1'])).includes(peer.ip6!)
    && (await inNode(['bridge', 'fdb', 'show', 'dev', 'flannel.1'])).includes(peer.ip));
  // udp: its TUN device lives while the daemon does; the route through it goes with it.
  await runBackend(udp, async () => (await inNode(['ip', '-4', 'route', 'show', 'dev', 'flannel0'])).includes(NETWORK));
  // host-gw, dual stack: routes via the peer on eth0.
  await runBackend(hostgw, async () => (await inNode(['ip', '-4', 'route', 'show', 'dev', 'eth0'])).includes(`via ${peer.ip}`)
    && (await inNode(['ip', '-6', 'route', 'show', 'dev', 'eth0'])).includes(`via ${peer.ip6!}`));
  // host-gw again in nftables mode: tables flannel-ipv4 and flannel-ipv6; the iptables rules go at its start.
  await runBackend(hostgwNftables, async () => (await inNode(['nft', 'list', 'tables'])).includes('flannel-ipv6'));
  // The iptables rules for this node's lease, by the daemon's own writer.
  const env = readFileSync(node.subnetFile, 'utf8');
  const v4 = /^FLANNEL_SUBNET=(\S+)$/m.exec(env)![1]!;
  const v6 = /^FLANNEL_IPV6_SUBNET=(\S+)$/m.exec(env)![1]!;
  await ruleWriter('iptables', node.ns).apply({
    masq: true, forward: true, randomFullyDisable: false,
    families: [
      { family: 4, network: Ip4Net.parse(NETWORK), subnet: Ip4Net.parse(v4, true) },
      { family: 6, network: Ip6Net.parse(NETWORK6), subnet: Ip6Net.parse(v6, true) },
    ],
  });

  // The pods' bridge, on node 1's subnet (the CNI bridge delegate's cni0), with a pod on it.
  await cluster.addPod(node);
  // What other parts of flanneld make, made the way they make it: a wireguard-go serving flannel-wg, left
  // running in the background (its UAPI socket in a /run/wireguard of the node's own), a TUN device
  // named flannel-wg-v6, the CNI installation.
  room = await wireguardRoom(node.ns);
  await run([...room.enter, 'env', 'WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1', 'wireguard-go', 'flannel-wg']);
  const pids = await netnsPids(node.ns);
  const comms = pids.map((pid) => { try { return readFileSync(`/proc/${pid}/comm`, 'utf8').trim(); } catch { return ''; } });
  wireguardGo = pids.find((_, i) => comms[i] === 'wireguard-go')!;
  expect(wireguardGo).toBeGreaterThan(0);
  await inNode(['ip', 'tuntap', 'add', 'dev', 'flannel-wg-v6', 'mode', 'tun']);
  for (const [dst, via] of OPERATOR_ROUTES) await inNode(['ip', 'route', 'add', dst, 'via', via, 'dev', 'eth0']);
  const root = join(cluster.tmpDir, 'node1-host');
  cni = { bin: join(root, 'opt/cni/bin'), conf: join(root, 'etc/cni/net.d'), data: join(root, 'var/lib/cni/flannel') };
  const installed = await run([repoPath('deploy', 'install-cni-plugin.sh'), '--copy', join(root, 'opt/cni')]);
  expect(installed.code).toBe(0);
  mkdirSync(cni.conf, { recursive: true });
  writeFileSync(join(cni.conf, '10-flannel.conflist'), JSON.stringify({ name: 'cbr0', cniVersion: '1.0.0', plugins: [{ type: 'flannel' }, { type: 'portmap' }] }));
  writeFileSync(join(cni.conf, '99-other.conflist'), JSON.stringify({ name: 'other', cniVersion: '1.0.0', plugins: [{ type: 'bridge' }] }));
  mkdirSync(cni.data, { recursive: true });
  writeFileSync(join(cni.data, 'abc123'), '{}');
}, 180_000);

afterAll(async () => {
  await room?.close();
  await cluster?.destroy();
});

describe('flannelctl node cleanup', () => {
  it('finds what every backend left before it runs (so the checks below can fail)', async () => {
    const links = await inNode(['ip', 'link', 'show']);
    for (const dev of ['flannel.1', 'flannel-v6.1', 'flannel-wg', 'flannel-wg-v6', 'cni0']) expect(links).toContain(`${dev}:`);
    expect(await inNode(['ip', '-4', 'route', 'show'])).toMatch(/^198\.19\.\d+\.0\/24 via 198\.18\.0\.2 dev eth0/m);
    expect(await inNode(['ip', '-6', 'route', 'show'])).toMatch(/^2001:2:1:[0-9a-f]+::\/64 via 2001:2::2 dev eth0/m);
    expect(await inNode(['bridge', 'fdb', 'show'])).toContain('dev flannel.1');
    expect(await inNode(['iptables-save'])).toContain('FLANNEL-POSTRTG');
    expect(await inNode(['ip6tables-save'])).toContain('FLANNEL-FWD');
    expect(await inNode(['nft', 'list', 'ruleset'])).toContain('flannel-ipv6');
    expect(existsSync(node.subnetFile)).toBe(true);
    expect(await cluster.etcdctl(['get', '--prefix', '/coreos.com/network/subnets/', '--keys-only'])).toMatch(/subnets\/198\.19/);
    expect(alive(wireguardGo)).toBe(true);
    expect((await run([...room.enter, 'ls', '/run/wireguard'])).stdout.trim()).toBe('flannel-wg.sock');
  });

  it('removes it all, says what it removed, leaves the operator\'s routes and the other node\'s lease', async () => {
    const m = /^FLANNEL_SUBNET=(\d+\.\d+\.\d+)\.\d+\/(\d+)$/m.exec(readFileSync(node.subnetFile, 'utf8'));
    const env = `${m![1]}.0/${m![2]}`;
    const res = await flannelctl(cleanupArgs());
    expect(res.code, res.stdout + res.stderr).toBe(0);
    expect(res.stdout).toContain('removed device flannel.1 (vxlan)');
    expect(res.stdout).toContain('removed device flannel-wg (tun)');
    // The wireguard-go serving it exits with its device, and takes its socket with it.
    expect(await waitFor(() => !alive(wireguardGo), 5000)).toBe(true);
    expect((await run([...room.enter, 'ls', '/run/wireguard'])).stdout.trim()).toBe('');
    expect(res.stdout).toContain('removed bridge cni0');
    expect(res.stdout).toMatch(/^removed route 198\.19\.\d+\.0\/24 via 198\.18\.0\.2 dev eth0$/m);
    expect(res.stdout).toContain('removed nftables tables ip flannel-ipv4 and ip6 flannel-ipv6');
    expect(res.stdout).toContain('removed iptables and ip6tables chains FLANNEL-POSTRTG and FLANNEL-FWD, with the jumps to them');
    expect(res.stdout).toContain(`lease ${env} (public IP ${node.ip}) deleted from etcd`);

    const links = await inNode(['ip', '-d', 'link', 'show']);
    expect(links).not.toMatch(/flannel|cni0/);
    const routes4 = await inNode(['ip', '-4', 'route', 'show', 'table', 'all']);
    const routes6 = await inNode(['ip', '-6', 'route', 'show', 'table', 'all']);
    for (const [dst, via] of OPERATOR_ROUTES) expect(routes4.split("\n").map((l) => l.trim())).toContain(`${dst} via ${via} dev eth0`);
    const others4 = routes4.split('\n').filter((l) => !OPERATOR_ROUTES.some(([dst]) => l.startsWith(`${dst} `)));
    expect(others4.join('\n')).not.toMatch(/flannel|198\.19\./);
    expect(routes6).not.toMatch(/flannel|2001:2:1:/);
    expect(await inNode(['bridge', 'fdb', 'show'])).not.toMatch(/flannel/);
    expect(await inNode(['ip', 'neigh', 'show'])).not.toMatch(/flannel/);
    for (const save of ['iptables-save', 'ip6tables-save']) expect(await inNode([save]), save).not.toMatch(/flannel/i);
    expect(await inNode(['nft', 'list', 'ruleset'])).not.toMatch(/flannel/i);
    expect(existsSync(node.subnetFile)).toBe(false);
    expect(existsSync(join(cni.bin, 'flannel'))).toBe(false);
    expect(readdirSync(join(cni.bin, '..'))).toEqual(['bin']);
    expect(readdirSync(cni.conf)).toEqual(['99-other.conflist']);
    expect(existsSync(cni.data)).toBe(false);
    // Every lease of this node is gone (one per network config it ran with); the peer's stay.
    const leases = await cluster.etcdctl(['get', '--prefix', '/coreos.com/network/subnets/']);
    expect(leases).not.toContain(`"PublicIP":"${node.ip}"`);
    expect(leases).toContain(`"PublicIP":"${cluster.nodes[1]!.ip}"`);
    expect(leases).not.toContain(env.replace('/', '-'));
  });

  it('a second run finds nothing and succeeds', async () => {
    const res = await flannelctl(cleanupArgs());
    expect(res.code, res.stdout + res.stderr).toBe(0);
    expect(res.stdout).toBe('nothing of flanneld found on this node\nno lease of this node in etcd\n');
    expect(res.stderr).toContain('does not exist');
  });
});
