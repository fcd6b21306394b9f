// The netfilter rules against the real kernel (Debian's nft-backed iptables, and nft) inside throw-away
// namespaces: upstream flanneld v0.28.9's listings line for line — written out below in the order its
// e2e script (e2e/run-e2e-tests.sh, check_iptables and check_nftables) writes them, with our network and
// lease substituted — for IPv4 and IPv6 in both modes; repairs; an older flanneld's leftovers; switching
// modes; and real packets through the masquerade rules.
import { spawn, type ChildProcess } from 'node:child_process';
import { Writable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { type NetfilterMode, type NetfilterOptions, type NetfilterRules, startNetfilterRules } from '../src/netfilter/index.js';
import { silentLogger } from '../src/common/log.js';
import { Ip4Net } from '../src/common/ip4.js';
import { Ip6Net } from '../src/common/ip6.js';
import { addNetns, delNetns, run, runId, waitFor } from '../testbed/netns.js';
import { expectedForward, expectedNat, expectedNftForward, expectedPostrtg, forwardListing, natListing, nftChain } from './harness/netfilter-listings.js';

const NETWORK = '198.19.0.0/16';
const NETWORK6 = '2001:2:1::/48';

const OTHER_V4 = '-A FORWARD -s 198.18.0.77/32 -j ACCEPT';
const OTHER_V6 = '-A FORWARD -s 2001:2::77/128 -j ACCEPT';

describe('netfilter rules in the kernel', () => {
  const id = runId();
  const ns = `nf-${id}`;
  const started: NetfilterRules[] = [];

  beforeAll(async () => {
    await addNetns(ns);
    // Rules of another program, which must survive everything we do.
    await run(['iptables', '-A', 'FORWARD', '-s', '198.18.0.77', '-j', 'ACCEPT'], { netns: ns });
    await run(['ip6tables', '-A', 'FORWARD', '-s', '2001:2::77', '-j', 'ACCEPT'], { netns: ns });
  });
  // Each test starts from no rules of ours, whatever the test before it left behind.
  afterEach(async () => {
    for (const r of started.splice(0)) await r.stop({ removeRules: true });
  });
  afterAll(async () => {
    await delNetns(ns);
  });

  async function start(mode: NetfilterMode, subnet = '198.19.5.0/24', subnet6: string | null = '2001:2:1:5::/64', extra: Partial<NetfilterOptions> = {}): Promise<NetfilterRules> {
    const r = await startNetfilterRules(
      {
        mode, network: Ip4Net.parse(NETWORK), ipv6Network: Ip6Net.parse(NETWORK6), ipMasq: true, forwardRules: true,
        randomFullyDisable: false, resyncMs: 200, log: silentLogger, netns: ns, ...extra,
      },
      { subnet: Ip4Net.parse(subnet), ipv6Subnet: subnet6 === null ? null : Ip6Net.parse(subnet6) },
    );
    started.push(r);
    return r;
  }

  const iptablesListings = async () => ({
    nat: await natListing(ns, 'iptables'), nat6: await natListing(ns, 'ip6tables'),
    fwd: await forwardListing(ns, 'iptables'), fwd6: await forwardListing(ns, 'ip6tables'),
  });
  const expectedIptables = (subnet: string, subnet6: string) => ({
    nat: expectedNat(NETWORK, subnet, '224.0.0.0/4'), nat6: expectedNat(NETWORK6, subnet6, 'ff00::/8'),
    fwd: expectedForward(NETWORK, [OTHER_V4]), fwd6: expectedForward(NETWORK6, [OTHER_V6]),
  });
  const nftListings = async () => ({
    postrtg: await nftChain(ns, 'ip', 'postrtg'), forward: await nftChain(ns, 'ip', 'forward'),
    postrtg6: await nftChain(ns, 'ip6', 'postrtg'), forward6: await nftChain(ns, 'ip6', 'forward'),
  });
  const expectedNft = (subnet: string, subnet6: string) => ({
    postrtg: expectedPostrtg('ip', NETWORK, subnet, '224.0.0.0/4'), forward: expectedNftForward('ip', NETWORK),
    postrtg6: expectedPostrtg('ip6', NETWORK6, subnet6, 'ff00::/8'), forward6: expectedNftForward('ip6', NETWORK6),
  });
  const noIptables = { nat: '', nat6: '', fwd: `-P FORWARD ACCEPT\n${OTHER_V4}`, fwd6: `-P FORWARD ACCEPT\n${OTHER_V6}` };
  const noNft = { postrtg: '', forward: '', postrtg6: '', forward6: '' };
  const nftTables = async () => (await run(['nft', 'list', 'tables'], { netns: ns })).stdout.split('\n').filter((l) => l.includes('flannel'));

  it("iptables mode: upstream v0.28.9's listings, IPv4 and IPv6, line for line; a restart adds nothing", async () => {
    const first = await start('iptables');
    expect(await iptablesListings()).toEqual(expectedIptables('198.19.5.0/24', '2001:2:1:5::/64'));
    const again = await start('iptables');
    await again.stop();
    expect(await iptablesListings()).toEqual(expectedIptables('198.19.5.0/24', '2001:2:1:5::/64'));
    expect(await nftTables()).toEqual([]);

    // Deleted, flushed or foreign rules: everything of ours is rewritten within a few resync periods.
    await run(['iptables', '-t', 'nat', '-D', 'POSTROUTING', '-m', 'comment', '--comment', 'flanneld masq', '-j', 'FLANNEL-POSTRTG'], { netns: ns });
    await run(['ip6tables', '-D', 'FLANNEL-FWD', '-d', NETWORK6, '-m', 'comment', '--comment', 'flanneld forward', '-j', 'ACCEPT'], { netns: ns });
    // (Each delete fails the test if there was nothing to delete; the 200 ms check may restore it at once.)
    const restored = async () => JSON.stringify(await iptablesListings()) === JSON.stringify(expectedIptables('198.19.5.0/24', '2001:2:1:5::/64'));
    expect(await waitFor(restored, 5000)).toBe(true);
    await run(['iptables', '-t', 'nat', '-F'], { netns: ns });
    expect(await waitFor(restored, 5000)).toBe(true);
    await run(['iptables', '-t', 'nat', '-A', 'FLANNEL-POSTRTG', '-s', '198.18.0.9', '-j', 'RETURN'], { netns: ns });
    expect(await waitFor(restored, 5000)).toBe(true);

    // A new lease: the per-lease rules follow it, none of the old subnet's stay.
    await first.updateSubnets({ subnet: Ip4Net.parse('198.19.9.0/24'), ipv6Subnet: Ip6Net.parse('2001:2:1:9::/64') });
    expect(await iptablesListings()).toEqual(expectedIptables('198.19.9.0/24', '2001:2:1:9::/64'));

    await first.stop({ removeRules: true });
    expect(await iptablesListings()).toEqual(noIptables);
  });

  it("iptables mode over an older flanneld's rules: v0.20.2's inserted jump and chain, and an earlier subnet's per-lease rules, are replaced", async () => {
    for (const bin of ['iptables', 'ip6tables'] as const) {
      const [net, old] = bin === 'iptables' ? [NETWORK, '198.19.7.0/24'] : [NETWORK6, '2001:2:1:7::/64'];
      const c = ['-m', 'comment', '--comment', 'flanneld masq'];
      await run([bin, '-t', 'nat', '-N', 'FLANNEL-POSTRTG'], { netns: ns });
      await run([bin, '-t', 'nat', '-I', 'POSTROUTING', '1', ...c, '-j', 'FLANNEL-POSTRTG'], { netns: ns });
      for (const rule of [['-s', net, '-d', net, ...c, '-j', 'RETURN'], ['-s', old, '-d', net, ...c, '-j', 'RETURN'], ['!', '-s', net, '-d', old, ...c, '-j', 'RETURN']]) {
        await run([bin, '-t', 'nat', '-A', 'FLANNEL-POSTRTG', ...rule], { netns: ns });
      }
      await run([bin, '-N', 'FLANNEL-FWD'], { netns: ns });
      await run([bin, '-I', 'FORWARD', '1', '-m', 'comment', '--comment', 'flanneld forward', '-j', 'FLANNEL-FWD'], { netns: ns });
    }
    const r = await start('iptables', '198.19.5.0/24', '2001:2:1:5::/64');
    expect(await iptablesListings()).toEqual(expectedIptables('198.19.5.0/24', '2001:2:1:5::/64'));
    await r.stop({ removeRules: true });
    expect(await iptablesListings()).toEqual(noIptables);
  });

  it("nftables mode: upstream v0.28.9's listings of both tables, line for line; repairs; a new lease", async () => {
    const r = await start('nftables');
    expect(await nftListings()).toEqual(expectedNft('198.19.5.0/24', '2001:2:1:5::/64'));
    expect(await iptablesListings()).toEqual(noIptables);

    const restored = async () => JSON.stringify(await nftListings()) === JSON.stringify(expectedNft('198.19.5.0/24', '2001:2:1:5::/64'));
    await run(['nft', 'flush', 'chain', 'ip', 'flannel-ipv4', 'postrtg'], { netns: ns });
    expect(await waitFor(restored, 5000)).toBe(true);
    await run(['nft', 'delete', 'table', 'ip6', 'flannel-ipv6'], { netns: ns });
    expect(await waitFor(restored, 5000)).toBe(true);
    await run(['nft', 'add', 'rule', 'ip', 'flannel-ipv4', 'forward', 'ip', 'saddr', '198.18.0.9', 'drop'], { netns: ns });
    expect(await waitFor(restored, 5000)).toBe(true);

    await r.updateSubnets({ subnet: Ip4Net.parse('198.19.9.0/24'), ipv6Subnet: Ip6Net.parse('2001:2:1:9::/64') });
    expect(await nftListings()).toEqual(expectedNft('198.19.9.0/24', '2001:2:1:9::/64'));
    await r.stop({ removeRules: true });
    expect(await nftListings()).toEqual(noNft);
    expect(await nftTables()).toEqual([]);
  });

  it("a start in the other mode writes its own rules, then removes the other mode's; a stop leaves them", async () => {
    const lines: string[] = [];
    const log = pino({ level: 'info' }, new Writable({ write: (chunk: Buffer, _e, cb) => (lines.push(chunk.toString()), cb()) }));
    const a = await start('iptables', '198.19.5.0/24', null);
    await a.stop();
    expect((await iptablesListings()).nat).toBe(expectedNat(NETWORK, '198.19.5.0/24', '224.0.0.0/4'));

    const b = await start('nftables', '198.19.5.0/24', null, { log });
    expect(await iptablesListings()).toEqual(noIptables);
    expect((await nftListings()).postrtg).toBe(expectedPostrtg('ip', NETWORK, '198.19.5.0/24', '224.0.0.0/4'));
    // A lease with no IPv6 subnet: upstream's flannel-ipv6 table exists, with no chains.
    expect(await nftTables()).toEqual(['table ip flannel-ipv4', 'table ip6 flannel-ipv6']);
    expect((await nftListings()).postrtg6).toBe('');
    expect(lines.join('')).toContain('removed the iptables rules of an earlier run: the network config asks for nftables');
    await b.stop();

    const c = await start('iptables', '198.19.5.0/24', null);
    expect(await nftTables()).toEqual([]);
    expect((await iptablesListings()).nat).toBe(expectedNat(NETWORK, '198.19.5.0/24', '224.0.0.0/4'));
    expect((await iptablesListings()).nat6).toBe('');
    await c.stop({ removeRules: true });
  });

  it('--ip-masq-fully-random-disable: plain masquerade in both modes', async () => {
    const a = await start('iptables', '198.19.5.0/24', null, { randomFullyDisable: true });
    expect((await iptablesListings()).nat).toBe(expectedNat(NETWORK, '198.19.5.0/24', '224.0.0.0/4', 'MASQUERADE'));
    await a.stop({ removeRules: true });
    const b = await start('nftables', '198.19.5.0/24', null, { randomFullyDisable: true });
    expect((await nftListings()).postrtg).toBe(expectedPostrtg('ip', NETWORK, '198.19.5.0/24', '224.0.0.0/4', 'masquerade'));
    await b.stop({ removeRules: true });
  });

  it('logs once, and does not throw, when the tools cannot be run', async () => {
    for (const mode of ['iptables', 'nftables'] as const) {
      const lines: string[] = [];
      const log = pino({ level: 'info' }, new Writable({ write: (chunk: Buffer, _e, cb) => (lines.push(chunk.toString()), cb()) }));
      const r = await start(mode, '198.19.5.0/24', null, { log, netns: `missing-${id}` });
      await waitFor(() => false, 700); // a few failed resync passes
      await r.updateSubnets({ subnet: Ip4Net.parse('198.19.7.0/24'), ipv6Subnet: null });
      await r.stop({ removeRules: true });
      const errors = lines.map((l) => JSON.parse(l) as { level: number; msg: string; err?: string }).filter((l) => l.level >= 50);
      expect(errors.filter((e) => e.msg.startsWith('cannot write the netfilter rules')).length, mode).toBeGreaterThan(0);
      // The same failure every resync period is one line; the lease change names other subnets, so it may be a second.
      expect(errors.filter((e) => e.msg.startsWith('cannot write the netfilter rules')).length, mode).toBeLessThanOrEqual(3);
      expect(errors[0]!.err).toMatch(/missing-/);
    }
  });
});

describe('masquerade with real packets', () => {
  const id = runId();
  const hub = `nfm-hub-${id}`;
  const node = `nfm-node-${id}`;
  const pod = `nfm-pod-${id}`;
  const port = 20000 + Math.floor(Math.random() * 20000);
  let listener: ChildProcess | null = null;

  beforeAll(async () => {
    for (const ns of [hub, node, pod]) await addNetns(ns);
    const link = async (a: string, aIf: string, b: string, bIf: string): Promise<void> => {
      await run(['ip', 'link', 'add', 'tmp-a', 'netns', a, 'type', 'veth', 'peer', 'name', 'tmp-b', 'netns', b], {});
      await run(['ip', '-n', a, 'link', 'set', 'tmp-a', 'name', aIf]);
      await run(['ip', '-n', b, 'link', 'set', 'tmp-b', 'name', bIf]);
      await run(['ip', '-n', a, 'link', 'set', aIf, 'up']);
      await run(['ip', '-n', b, 'link', 'set', bIf, 'up']);
    };
    // hub 198.18.0.254 <-> node eth0 198.18.0.1; node cni0 198.19.5.1/24 <-> pod eth0 198.19.5.2.
    await link(hub, 'eth0', node, 'eth0');
    await link(node, 'cni0', pod, 'eth0');
    await run(['ip', '-n', hub, 'addr', 'add', '198.18.0.254/24', 'dev', 'eth0']);
    // An address inside the flannel network on the hub stands for a pod on another node.
    await run(['ip', '-n', hub, 'addr', 'add', '198.19.6.2/32', 'dev', 'lo']);
    await run(['ip', '-n', hub, 'route', 'add', '198.19.5.0/24', 'via', '198.18.0.1']);
    await run(['ip', '-n', node, 'addr', 'add', '198.18.0.1/24', 'dev', 'eth0']);
    await run(['ip', '-n', node, 'addr', 'add', '198.19.5.1/24', 'dev', 'cni0']);
    await run(['ip', '-n', node, 'route', 'add', '198.19.6.0/24', 'via', '198.18.0.254']);
    await run(['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1'], { netns: node });
    await run(['ip', '-n', pod, 'addr', 'add', '198.19.5.2/24', 'dev', 'eth0']);
    await run(['ip', '-n', pod, 'route', 'add', 'default', 'via', '198.19.5.1']);

    // Replies to each connection with the peer address it saw.
    const script = `require('net').createServer((s) => s.end(s.remoteAddress + '\\n')).listen(${port}, '0.0.0.0', () => console.log('up'));`;
    listener = spawn('ip', ['netns', 'exec', hub, process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      listener!.stdout!.once('data', () => resolve());
      listener!.once('exit', (code) => reject(new Error(`listener exited ${code}`)));
    });
  });

  afterAll(async () => {
    if (listener?.pid) listener.kill('SIGKILL');
    for (const ns of [pod, node, hub]) await delNetns(ns);
  });

  async function sourceSeenByHub(dst: string): Promise<string> {
    // bash's /dev/tcp opens a real TCP connection from the pod namespace.
    const res = await run(['timeout', '5', 'bash', '-c', `exec 3<>/dev/tcp/${dst}/${port}; cat <&3`], { netns: pod });
    return res.stdout.trim();
  }

  it.each(['iptables', 'nftables'] as const)('%s: masquerades pod traffic leaving the network, and only that', async (mode) => {
    // Without rules the hub sees the pod's own address.
    expect(await sourceSeenByHub('198.18.0.254')).toBe('198.19.5.2');
    const rules = await startNetfilterRules(
      { mode, network: Ip4Net.parse(NETWORK), ipv6Network: null, ipMasq: true, forwardRules: true, randomFullyDisable: false, resyncMs: 5000, log: silentLogger, netns: node },
      { subnet: Ip4Net.parse('198.19.5.0/24'), ipv6Subnet: null },
    );
    try {
      expect(await sourceSeenByHub('198.18.0.254')).toBe('198.18.0.1');
      // Pod to (remote) pod keeps the pod address.
      expect(await sourceSeenByHub('198.19.6.2')).toBe('198.19.5.2');
    } finally {
      await rules.stop({ removeRules: true });
    }
    expect(await sourceSeenByHub('198.18.0.254')).toBe('198.19.5.2');
  });
});
