// iptables rules against the real kernel (Debian's nft-backed iptables) inside throw-away namespaces,
// and real packets through the masquerade rules: a pod namespace behind a node namespace talks to a
// TCP listener in a hub namespace, which reports the source address it sees.
import { spawn, type ChildProcess } from 'node:child_process';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { startIptablesRules, type IptablesRules } from '../src/iptables/index.js';
import { silentLogger } from '../src/common/log.js';
import { Ip4Net } from '../src/common/ip4.js';
import { addNetns, delNetns, run, runId, sleep, waitFor } from '../testbed/netns.js';

const NETWORK = Ip4Net.parse('198.19.0.0/16');
const SUBNET = Ip4Net.parse('198.19.5.0/24');

async function save(ns: string, table: 'filter' | 'nat'): Promise<string[]> {
  const out = (await run(['iptables-save', '-t', table], { netns: ns })).stdout;
  return out.split('\n').filter((l) => l.startsWith('-A ') || l.startsWith(':FLANNEL'));
}

const FILTER_RULES = [
  ':FLANNEL-FWD - [0:0]',
  '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
  '-A FLANNEL-FWD -s 198.19.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
  '-A FLANNEL-FWD -d 198.19.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
];

function natRules(subnet: string): string[] {
  return [
    ':FLANNEL-POSTRTG - [0:0]',
    '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
    '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG -s 198.19.0.0/16 -d 198.19.0.0/16 -m comment --comment "flanneld masq" -j RETURN',
    '-A FLANNEL-POSTRTG -s 198.19.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
    `-A FLANNEL-POSTRTG ! -s 198.19.0.0/16 -d ${subnet} -m comment --comment "flanneld masq" -j RETURN`,
    '-A FLANNEL-POSTRTG ! -s 198.19.0.0/16 -d 198.19.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
  ];
}

describe('iptables rules', () => {
  const id = runId();
  const ns = `ipt-${id}`;
  const started: IptablesRules[] = [];

  beforeAll(async () => {
    await addNetns(ns);
  });
  afterAll(async () => {
    for (const r of started) await r.stop();
    await delNetns(ns);
  });

  async function start(extra: Partial<Parameters<typeof startIptablesRules>[0]> = {}): Promise<IptablesRules> {
    const r = await startIptablesRules({
      network: NETWORK,
      subnet: SUBNET,
      ipMasq: true,
      forwardRules: true,
      log: silentLogger,
      resyncMs: 200,
      netns: ns,
      ...extra,
    });
    started.push(r);
    return r;
  }

  it('installs the FORWARD and masquerade rules exactly as upstream v0.20.2, idempotently', async () => {
    // A rule of somebody else's, which must survive everything we do.
    await run(['iptables', '-A', 'FORWARD', '-s', '198.18.0.77', '-j', 'ACCEPT'], { netns: ns });
    const first = await start();
    expect(await save(ns, 'filter')).toEqual([...FILTER_RULES.slice(0, 2), '-A FORWARD -s 198.18.0.77/32 -j ACCEPT', ...FILTER_RULES.slice(2)]);
    expect(await save(ns, 'nat')).toEqual(natRules('198.19.5.0/24'));

    // A second start (daemon restart while the rules stay) adds nothing.
    const second = await start();
    await second.stop();
    expect((await save(ns, 'nat')).length).toBe(natRules('').length);
    expect((await save(ns, 'filter')).length).toBe(FILTER_RULES.length + 1);

    // Deleted rules come back within a few resync periods, in the same order.
    await run(['iptables', '-t', 'nat', '-D', 'POSTROUTING', '-m', 'comment', '--comment', 'flanneld masq', '-j', 'FLANNEL-POSTRTG'], { netns: ns });
    await run(['iptables', '-D', 'FLANNEL-FWD', '-d', '198.19.0.0/16', '-m', 'comment', '--comment', 'flanneld forward', '-j', 'ACCEPT'], { netns: ns });
    expect(await save(ns, 'nat')).not.toContain(natRules('')[1]);
    const restored = await waitFor(async () => (await save(ns, 'nat')).length === 7 && (await save(ns, 'filter')).length === 5, 5000);
    expect(restored).toBe(true);
    expect(await save(ns, 'nat')).toEqual(natRules('198.19.5.0/24'));
    expect((await save(ns, 'filter')).filter((l) => l.includes('flanneld'))).toEqual(FILTER_RULES.slice(1));

    // A flushed nat table (what `iptables -t nat -F` by an administrator does) is repaired too.
    await run(['iptables', '-t', 'nat', '-F'], { netns: ns });
    expect(await waitFor(async () => (await save(ns, 'nat')).length === 7, 5000)).toBe(true);

    // A new subnet replaces the rule that names the old one.
    await first.updateSubnet(Ip4Net.parse('198.19.9.0/24'));
    expect(await save(ns, 'nat')).toEqual(natRules('198.19.9.0/24'));

    await first.stop({ removeRules: true });
    expect(await save(ns, 'nat')).toEqual([]);
    expect(await save(ns, 'filter')).toEqual(['-A FORWARD -s 198.18.0.77/32 -j ACCEPT']);
  });

  it('stop() without removeRules leaves the rules and ends the periodic repair', async () => {
    const r = await start({ ipMasq: false });
    expect(await save(ns, 'nat')).toEqual([]);
    expect((await save(ns, 'filter')).filter((l) => l.includes('flanneld'))).toEqual(FILTER_RULES.slice(1));
    await r.stop();
    await run(['iptables', '-D', 'FLANNEL-FWD', '-s', '198.19.0.0/16', '-m', 'comment', '--comment', 'flanneld forward', '-j', 'ACCEPT'], { netns: ns });
    await sleep(800);
    expect((await save(ns, 'filter')).filter((l) => l.includes('flanneld')).length).toBe(2);
    // Clean up for the next test through a fresh instance, which also repairs the chain first.
    const cleaner = await start({ ipMasq: false });
    expect((await save(ns, 'filter')).filter((l) => l.includes('flanneld'))).toEqual(FILTER_RULES.slice(1));
    await cleaner.stop({ removeRules: true });
    expect(await save(ns, 'filter')).toEqual(['-A FORWARD -s 198.18.0.77/32 -j ACCEPT']);
  });

  it('installs nothing when both rule sets are off', async () => {
    const r = await start({ ipMasq: false, forwardRules: false });
    expect(await save(ns, 'nat')).toEqual([]);
    expect(await save(ns, 'filter')).toEqual(['-A FORWARD -s 198.18.0.77/32 -j ACCEPT']);
    await r.stop({ removeRules: true });
  });

  it('logs, and does not throw, when iptables cannot be run', async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        lines.push(chunk.toString());
        cb();
      },
    });
    const r = await start({ log: pino({ level: 'info' }, sink), netns: `missing-${id}` });
    await r.updateSubnet(Ip4Net.parse('198.19.7.0/24'));
    await r.stop({ removeRules: true });
    const errors = lines.map((l) => JSON.parse(l) as { level: number; msg: string }).filter((l) => l.level >= 50);
    expect(errors.length).toBeGreaterThan(0);
    expect(errors[0]!.msg).toMatch(/iptables/);
  });
});

describe('masquerade with real packets', () => {
  const id = runId();
  const hub = `iptm-hub-${id}`;
  const node = `iptm-node-${id}`;
  const pod = `iptm-pod-${id}`;
  const port = 20000 + Math.floor(Math.random() * 20000);
  let listener: ChildProcess | null = null;
  let rules: IptablesRules | null = null;

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
    if (rules) await rules.stop({ removeRules: true });
    if (listener?.pid) listener.kill('SIGKILL');
    for (const ns of [pod, node, hub]) await delNetns(ns);
  });

  async function sourceSeenByHub(dst: string): Promise<string> {
    // bash's /dev/tcp opens a real TCP connection from the pod namespace.
    const res = await run(['timeout', '5', 'bash', '-c', `exec 3<>/dev/tcp/${dst}/${port}; cat <&3`], { netns: pod });
    return res.stdout.trim();
  }

  it('masquerades pod traffic leaving the network, and only that', async () => {
    // Without rules the hub sees the pod's own address.
    expect(await sourceSeenByHub('198.18.0.254')).toBe('198.19.5.2');

    rules = await startIptablesRules({ network: NETWORK, subnet: SUBNET, ipMasq: true, forwardRules: true, log: silentLogger, netns: node });
    expect(await sourceSeenByHub('198.18.0.254')).toBe('198.18.0.1');
    // Pod to (remote) pod keeps the pod address.
    expect(await sourceSeenByHub('198.19.6.2')).toBe('198.19.5.2');

    await rules.stop({ removeRules: true });
    rules = null;
    expect(await sourceSeenByHub('198.18.0.254')).toBe('198.19.5.2');
  });
});
