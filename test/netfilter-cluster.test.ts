// The daemon's masquerade and forward rules on a dual-stack vxlan cluster, and pods reaching the
// outside through them: node 1 runs with --ip-masq, node 2 without. "Outside" is a host on the hub's
// bridge (198.18.0.200 and 2001:2::c8) with routes only to the underlay, so it can answer masqueraded
// traffic (from a node's address) and nothing else. Node 1 is restarted into nftables mode and back:
// each start leaves exactly upstream v0.28.9's listing of its mode and nothing of the other, and
// masquerade never stops, not even while the daemon is down; the env file appears only once the rules are in.
import { spawn, type ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Cluster, type ClusterNode, createCluster, dualSubnetsOf, unreachablePodPairs } from '../testbed/cluster.js';
import { addUnderlayHost, delNetns, run, waitFor } from '../testbed/netns.js';
import { expectedForward, expectedNat, expectedNftForward, expectedPostrtg, forwardListing, natListing, nftChain } from './harness/netfilter-listings.js';

const NETWORK = '198.19.0.0/16';
const NETWORK6 = '2001:2:1::/48';
const CONFIG = { Network: NETWORK, EnableIPv6: true, IPv6Network: NETWORK6, Backend: { Type: 'vxlan' } };
const OUTSIDE = '198.18.0.200';
const OUTSIDE6 = '2001:2::c8';
const MASQ_ARGS = ['--ip-masq', '--iptables-resync=1'];

let cluster: Cluster;
let outside = '';
let listener: ChildProcess | null = null;
const port = 20000 + Math.floor(Math.random() * 20000);

/** The source address the outside host saw for a request from the node's first pod, or null when nothing answered. */
async function sourceSeenOutside(node: ClusterNode, family: 4 | 6): Promise<string | null> {
  const url = family === 4 ? `http://${OUTSIDE}:${port}/` : `http://[${OUTSIDE6}]:${port}/`;
  const res = await run(['curl', '-s', '-g', '--max-time', '3', url], { netns: node.pods[0]!.ns, allowFail: true, timeoutMs: 10_000 });
  return res.code === 0 ? res.stdout.trim() : null;
}

async function listings(node: ClusterNode) {
  return {
    nat: await natListing(node.ns, 'iptables'), nat6: await natListing(node.ns, 'ip6tables'),
    fwd: await forwardListing(node.ns, 'iptables'), fwd6: await forwardListing(node.ns, 'ip6tables'),
    postrtg: await nftChain(node.ns, 'ip', 'postrtg'), forward: await nftChain(node.ns, 'ip', 'forward'),
    postrtg6: await nftChain(node.ns, 'ip6', 'postrtg'), forward6: await nftChain(node.ns, 'ip6', 'forward'),
  };
}

const NO_IPTABLES = { nat: '', nat6: '', fwd: '-P FORWARD ACCEPT', fwd6: '-P FORWARD ACCEPT' };
const NO_NFT = { postrtg: '', forward: '', postrtg6: '', forward6: '' };

async function expected(node: ClusterNode, mode: 'iptables' | 'nftables') {
  const { v4, v6 } = await dualSubnetsOf(node);
  return mode === 'iptables'
    ? {
        nat: expectedNat(NETWORK, v4.toString(), '224.0.0.0/4'), nat6: expectedNat(NETWORK6, v6.toString(), 'ff00::/8'),
        fwd: expectedForward(NETWORK), fwd6: expectedForward(NETWORK6), ...NO_NFT,
      }
    : {
        ...NO_IPTABLES,
        postrtg: expectedPostrtg('ip', NETWORK, v4.toString(), '224.0.0.0/4'), forward: expectedNftForward('ip', NETWORK),
        postrtg6: expectedPostrtg('ip6', NETWORK6, v6.toString(), 'ff00::/8'), forward6: expectedNftForward('ip6', NETWORK6),
      };
}

/** Waits until the node's listings are exactly those of `mode`, then returns them (the assertion shows any difference). */
async function settledListings(node: ClusterNode, mode: 'iptables' | 'nftables') {
  const want = await expected(node, mode);
  await waitFor(async () => JSON.stringify(await listings(node)) === JSON.stringify(want), 15_000, 200);
  return { got: await listings(node), want };
}

beforeAll(async () => {
  cluster = await createCluster({ nodes: 2, ipv6: true, config: CONFIG, startDaemons: false });
  const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
  await Promise.all([cluster.startDaemon(n1, MASQ_ARGS), cluster.startDaemon(n2)]);
  for (const node of cluster.nodes) await cluster.addPod(node);
  outside = await addUnderlayHost(cluster.hubNs, OUTSIDE);
  await run(['ip', '-n', outside, 'addr', 'add', `${OUTSIDE6}/64`, 'dev', 'eth0', 'nodad']);
  // Answers every request with the peer address it saw (IPv4 ones as the plain dotted quad).
  const script = `require('http').createServer((q, s) => s.end(q.socket.remoteAddress.replace(/^::ffff:/, '') + '\\n')).listen(${port}, '::', () => console.log('up'));`;
  listener = spawn('ip', ['netns', 'exec', outside, process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    listener!.stdout!.once('data', () => resolve());
    listener!.once('exit', (code) => reject(new Error(`listener exited ${code}`)));
  });
}, 90_000);

afterAll(async () => {
  if (listener?.pid) listener.kill('SIGKILL');
  if (outside) await delNetns(outside);
  await cluster?.destroy();
});

describe('masquerade and forward rules of a running daemon', () => {
  it("iptables mode: upstream's listings on the masquerading node; its pods reach the outside as the node, the other node's pods get no answer", async () => {
    const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
    const { got, want } = await settledListings(n1, 'iptables');
    expect(got).toEqual(want);
    expect(await sourceSeenOutside(n1, 4)).toBe(n1.ip);
    expect(await sourceSeenOutside(n1, 6)).toBe(n1.ip6);
    expect(await sourceSeenOutside(n2, 4)).toBeNull();
    expect(await sourceSeenOutside(n2, 6)).toBeNull();
    // Between pods, nothing is masqueraded and everything still flows.
    expect(await unreachablePodPairs(cluster)).toEqual([]);
    expect(await unreachablePodPairs(cluster, 10_000, { family: 6 })).toEqual([]);
  }, 60_000);

  it('a restart into nftables mode keeps masquerading throughout and leaves only the nftables rules; a restart back leaves only the iptables rules', async () => {
    const n1 = cluster.nodes[0]!;
    for (const mode of ['nftables', 'iptables'] as const) {
      await cluster.etcdctl(['put', '/coreos.com/network/config', JSON.stringify({ ...CONFIG, ...(mode === 'nftables' ? { EnableNFTables: true } : {}) })]);
      await cluster.stopDaemon(n1);
      // Stopped: the rules stay, so the pods still reach the outside.
      expect(await sourceSeenOutside(n1, 4), mode).toBe(n1.ip);
      await cluster.startDaemon(n1, MASQ_ARGS);
      // No waiting: the env file is written only once the rules are in place (and the other mode's gone).
      expect(await listings(n1), `${mode}: ${cluster.logTail(n1, 1500)}`).toEqual(await expected(n1, mode));
      expect(await sourceSeenOutside(n1, 4), mode).toBe(n1.ip);
      expect(await sourceSeenOutside(n1, 6), mode).toBe(n1.ip6);
      expect(await unreachablePodPairs(cluster), mode).toEqual([]);
    }
  }, 90_000);
});
