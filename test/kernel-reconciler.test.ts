// The kernel writer's two paths (rtnetlink from the addon, iproute2 -force -batch) and the reconciler
// on top of them, against real namespaces: both families, routes (unicast and blackhole), neighbours
// and FDB entries; a verdict per entry, a refused entry never blocking the others; the same tables
// read back by either path; the digest that skips an unchanged kernel; repairs, and removal of only
// what is ours.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { silentLogger } from '../src/common/log.js';
import { Ip4Net, parseIp4 } from '../src/common/ip4.js';
import { Ip6Net, parseIp6 } from '../src/common/ip6.js';
import { metricsRegistry } from '../src/common/metrics.js';
import {
  type KernelEntry,
  type KernelOp,
  RTPROT_KERNEL,
  blackholeRoute,
  describeEntry,
  permanentFdb,
  permanentNeighbour,
  sameEntry,
  unicastRoute,
} from '../src/routes/entries.js';
import { ip, ipBatch } from '../src/routes/ip.js';
import { vxlanAddCommand, linkSetCommand } from '../src/routes/link.js';
import { loadNetlink } from '../src/routes/netlink.js';
import { type DumpScope, type KernelPath, openKernelPath } from '../src/routes/path.js';
import { BlackholeRoutes } from '../src/routes/blackhole.js';
import { KernelReconciler } from '../src/routes/reconciler.js';
import { capturingLogger } from './harness/log-capture.js';
import { addLoneNodeNetns, delNetns, run, runId, waitFor } from '../testbed/netns.js';

const NET4 = Ip4Net.parse('198.19.0.0/16');
const NET6 = Ip6Net.parse('2001:2:1::/48');
const SCOPE: DumpScope = { routeRoots: [NET4, NET6], devices: ['flannel.1', 'flannel-v6.1'] };
const a4 = parseIp4;
const a6 = parseIp6;
const net4 = (c: number) => Ip4Net.parse(`198.19.${c}.0/24`);
const net6 = (c: number) => Ip6Net.parse(`2001:2:1:${c.toString(16)}::/64`);
const mac = (c: number, v = 0) => `02:00:00:00:0${v}:${c.toString(16).padStart(2, '0')}`;

/** Every entry a dual-stack vxlan peer needs, on flannel.1 and flannel-v6.1. */
function peer(c: number): KernelEntry[] {
  return [
    permanentFdb('flannel.1', mac(c), a4(`198.18.0.${c}`)),
    permanentFdb('flannel-v6.1', mac(c, 6), a6(`2001:2::${c.toString(16)}`)),
    permanentNeighbour('flannel.1', net4(c).ip, mac(c)),
    permanentNeighbour('flannel-v6.1', net6(c).ip, mac(c, 6)),
    unicastRoute(net4(c), 'flannel.1', net4(c).ip, { onlink: true }),
    unicastRoute(net6(c), 'flannel-v6.1', net6(c).ip, { onlink: true }),
  ];
}

const set = (e: KernelEntry): KernelOp => ({ action: 'replace', entry: e, owner: null });

/** A node namespace with both vxlan devices up, and a stray local address the kernel will not route through. */
async function nodeNs(name: string): Promise<void> {
  await addLoneNodeNetns(name);
  await run(['ip', '-n', name, 'addr', 'add', '2001:2::1/64', 'dev', 'eth0', 'nodad']);
  const base = { vni: 1, dev: 'eth0', port: 8472, learning: false, gbp: false };
  await ip(vxlanAddCommand({ ...base, name: 'flannel.1', local: '198.18.0.1' }), { netns: name });
  await ip(vxlanAddCommand({ ...base, name: 'flannel-v6.1', local: '2001:2::1' }), { netns: name });
  await ipBatch([linkSetCommand('flannel.1', { up: true }), linkSetCommand('flannel-v6.1', { up: true }), ['addr', 'add', '198.19.7.0/32', 'dev', 'lo']], { netns: name });
}

/** What a dump says, as comparable text (read entries carry the kernel's protocol and metric too). */
function text(entries: readonly KernelEntry[]): string[] {
  return entries.map((e) => `${describeEntry(e)}${e.kind === 'route' ? ` proto ${e.protocol} metric ${e.metric}` : ''}`).sort();
}

const paths = ['netlink', 'iproute2'] as const;
const nss = new Map<string, string>();
const opened: KernelPath[] = [];

beforeAll(async () => {
  for (const p of paths) {
    const ns = `fl-${runId()}-kr-${p}`;
    nss.set(p, ns);
    await nodeNs(ns);
  }
});

afterAll(async () => {
  for (const p of opened) p.close();
  for (const ns of nss.values()) await delNetns(ns);
});

test('the rtnetlink addon is built (npm install)', () => {
  expect(loadNetlink()).not.toBeNull();
});

describe.each(paths)('writer: %s', (name) => {
  let path: KernelPath;
  beforeAll(() => {
    path = openKernelPath(name, nss.get(name)!, silentLogger);
    opened.push(path);
    expect(path.name).toBe(name);
  });

  test('both families in one batch: every entry gets its verdict, the refused one alone', async () => {
    const refused = unicastRoute(net4(7), 'flannel.1', net4(7).ip, { onlink: true }); // next hop is a local address
    const ops = [
      ...[2, 3].flatMap(peer),
      refused,
      blackholeRoute(net4(1)),
      blackholeRoute(net6(1)),
      unicastRoute(net4(9), 'eth0', a4('198.18.0.9')),
      unicastRoute(net6(9), 'eth0', a6('2001:2::9')),
      unicastRoute(net4(8), 'nosuchdev', a4('198.18.0.8')),
    ].map(set);
    // The order the model sends them in: FDB first, routes last.
    ops.sort((a, b) => ['fdb', 'neigh', 'route'].indexOf(a.entry.kind) - ['fdb', 'neigh', 'route'].indexOf(b.entry.kind));
    const verdicts = await path.apply(ops);
    const refusals = ops.map((o, i) => [describeEntry(o.entry), verdicts[i]] as const).filter(([, v]) => v !== null);
    expect(refusals.map(([e]) => e)).toEqual([describeEntry(refused), '198.19.8.0/24 via 198.18.0.8 dev nosuchdev']);
    expect(refusals[0]![1]).toMatch(/gateway/i);
    expect(refusals[1]![1]).toMatch(/nosuchdev|device/i);
    const dump = await path.dump(SCOPE, '');
    const held = text(dump.entries!);
    for (const o of ops.filter((_, i) => verdicts[i] === null)) expect(held.some((h) => h.startsWith(describeEntry(o.entry)))).toBe(true);
    expect(held.some((h) => h.startsWith(describeEntry(refused)))).toBe(false);
  });

  test('a dump that would equal the last one comes back without entries; a change brings them back', async () => {
    const first = await path.dump(SCOPE, '');
    const again = await path.dump(SCOPE, first.digest);
    expect(again).toEqual({ digest: first.digest });
    await ip(['neigh', 'del', '198.19.2.0', 'dev', 'flannel.1'], { netns: nss.get(name)! });
    const changed = await path.dump(SCOPE, first.digest);
    expect(changed.digest).not.toBe(first.digest);
    expect(text(changed.entries!)).not.toContain(describeEntry(permanentNeighbour('flannel.1', net4(2).ip, mac(2))));
    // Only the neighbours changed: the other tables come from the dump held, and all are there.
    expect(text(changed.entries!)).toEqual(text(first.entries!).filter((t) => t !== describeEntry(permanentNeighbour('flannel.1', net4(2).ip, mac(2)))));
    const verdicts = await path.apply([set(permanentNeighbour('flannel.1', net4(2).ip, mac(2)))]);
    expect(verdicts).toEqual([null]);
  });

  test('deletions of both families; deleting what is not there is refused alone', async () => {
    const dump = await path.dump(SCOPE, '');
    const mine = dump.entries!.filter((e) => (e.kind === 'route' ? e.protocol !== RTPROT_KERNEL && e.dst.toString().includes(':3') : e.key.endsWith('03') || e.key.includes(':3:')));
    const gone = unicastRoute(net4(99), 'flannel.1', net4(99).ip);
    const hole = dump.entries!.find((e) => e.kind === 'route' && e.type === 'blackhole' && e.dst.toString().includes(':'))!;
    const ops: KernelOp[] = [...mine.filter((e) => e.kind !== 'route'), gone, ...mine.filter((e) => e.kind === 'route'), hole].map((entry) => ({ action: 'delete', entry, owner: null }));
    const verdicts = await path.apply(ops);
    expect(ops.filter((_, i) => verdicts[i] !== null).map((o) => o.entry)).toEqual([gone]);
    const left = text((await path.dump(SCOPE, '')).entries!);
    for (const e of [...mine, hole]) expect(left.some((h) => h.startsWith(describeEntry(e)))).toBe(false);
    expect(left.some((h) => h.startsWith(describeEntry(blackholeRoute(net4(1)))))).toBe(true);
  });
});

test('both paths leave, and read back, identical tables', async () => {
  const dumps = await Promise.all(opened.map((p) => p.dump(SCOPE, '')));
  expect(dumps[0]!.entries!.length).toBeGreaterThan(10);
  expect(text(dumps[0]!.entries!)).toEqual(text(dumps[1]!.entries!));
  // And each reader reads what the other path wrote.
  const crossed = paths.map((p) => openKernelPath(p, nss.get(p === 'netlink' ? 'iproute2' : 'netlink'), silentLogger));
  opened.push(...crossed);
  for (const c of crossed) expect(text((await c.dump(SCOPE, '')).entries!)).toEqual(text(dumps[0]!.entries!));
});

describe.each(paths)('reconciler: %s', (name) => {
  let kernel: KernelReconciler;
  const stop = new AbortController();
  const { log, lines } = capturingLogger();
  const ns = `fl-${runId()}-krr-${name}`;
  /** Ours: what is on our devices, and gatewayed /24 routes on eth0 — never the kernel's own routes. */
  const owns = (e: KernelEntry): boolean => {
    if (e.kind !== 'route') return e.kind === 'fdb' || e.permanent;
    return e.protocol !== RTPROT_KERNEL && (e.dev === 'flannel.1' || e.dev === 'flannel-v6.1' || (e.dev === 'eth0' && e.via !== null && e.dst.prefixLen === 24));
  };
  const held = async (): Promise<string[]> => {
    const reader = openKernelPath(name, ns, silentLogger);
    try {
      return text((await reader.dump(SCOPE, '')).entries!);
    } finally {
      reader.close();
    }
  };
  const errors = async (kind: string): Promise<number> =>
    (await metricsRegistry.getSingleMetric('flannel_kernel_programming_errors_total')!.get()).values.find((v) => v.labels['kind'] === kind)?.value ?? 0;

  beforeAll(async () => {
    await nodeNs(ns);
    // Leftovers: one of ours to remove, one of someone else's to keep, and a wrong neighbour to repair.
    await ipBatch([
      ['route', 'add', '198.19.77.0/24', 'via', '198.19.77.0', 'dev', 'flannel.1', 'onlink'],
      ['route', 'add', '198.19.88.0/25', 'via', '198.18.0.88', 'dev', 'eth0'],
      ['neigh', 'add', '198.19.2.0', 'lladdr', '0a:00:00:00:00:02', 'dev', 'flannel.1', 'nud', 'permanent'],
    ], { netns: ns });
    kernel = new KernelReconciler({
      name: 'test',
      log,
      path: openKernelPath(name, ns, log),
      scope: () => ({ ...SCOPE, owns }),
      signal: stop.signal,
      resyncIntervalMs: 0,
    });
  });

  afterAll(async () => {
    stop.abort();
    await kernel.close();
    await delNetns(ns);
  });

  test('the first pass programs every owner, removes our leftovers, leaves others alone; one refused entry is logged, counted and retried', async () => {
    const before = await errors('route');
    for (const c of [2, 3, 7]) kernel.set(`peer ${c}`, peer(c));
    await kernel.request();
    const now = await held();
    for (const e of [...peer(2), ...peer(3), ...peer(7).filter((e) => !(e.kind === 'route' && e.dst.toString() === '198.19.7.0/24'))]) {
      expect(now.some((h) => h.startsWith(describeEntry(e))), describeEntry(e)).toBe(true);
    }
    expect(now.some((h) => h.startsWith('198.19.77.0/24'))).toBe(false);
    expect(now.some((h) => h.startsWith('198.19.88.0/25 via 198.18.0.88 dev eth0'))).toBe(true);
    expect(now).toContain(describeEntry(permanentNeighbour('flannel.1', net4(2).ip, mac(2))));
    expect(kernel.programmed('route', 4)).toBe(2);
    expect(kernel.programmed('route', 6)).toBe(3);
    expect(await errors('route')).toBe(before + 1);
    const warned = () => lines.filter((l) => l['msg'] === 'kernel refused an entry; every other entry is applied, this one is retried at the next resync');
    expect(warned().map((l) => [l['subnet'], l['kind'], l['entry']])).toEqual([['peer 7', 'route', '198.19.7.0/24 via 198.19.7.0 dev flannel.1 onlink']]);
    // Retried at each resync, logged again only when the error changes; taken once the cause is gone.
    expect(await kernel.resync()).toBe(0);
    expect(await errors('route')).toBe(before + 2);
    expect(warned()).toHaveLength(1);
    await ip(['addr', 'del', '198.19.7.0/32', 'dev', 'lo'], { netns: ns });
    expect(await kernel.resync()).toBe(1);
    expect(kernel.programmed('route', 4)).toBe(3);
  });

  test('entries deleted or changed by hand are repaired; an unchanged kernel skips the compare', async () => {
    await ipBatch([['route', 'del', '2001:2:1:3::/64', 'dev', 'flannel-v6.1'], ['neigh', 'replace', '2001:2:1:2::', 'lladdr', '0a:00:00:00:00:99', 'dev', 'flannel-v6.1', 'nud', 'permanent']], { netns: ns });
    await ip(['route', 'add', '198.19.66.0/24', 'via', '198.18.0.66', 'dev', 'eth0'], { netns: ns });
    await run(['bridge', '-n', ns, 'fdb', 'del', mac(3), 'dev', 'flannel.1', 'dst', '198.18.0.3', 'self']);
    expect(await kernel.resync()).toBe(4);
    const now = await held();
    expect(now.some((h) => h.startsWith(describeEntry(unicastRoute(net6(3), 'flannel-v6.1', net6(3).ip, { onlink: true }))))).toBe(true);
    expect(now).toContain(describeEntry(permanentNeighbour('flannel-v6.1', net6(2).ip, mac(2, 6))));
    expect(now.some((h) => h.startsWith('198.19.66.0/24'))).toBe(false);
    const unchanged = kernel.stats()['unchangedPasses']!;
    expect(await kernel.resync()).toBe(0); // compares everything, finds nothing: the next may skip
    expect(await kernel.resync()).toBe(0);
    expect(kernel.stats()['unchangedPasses']).toBe(unchanged + 1);
    // A multicast group the device joins (a NOARP neighbour, the kernel's own) leaves the kernel unchanged for us.
    await ip(['-6', 'neigh', 'add', 'ff02::1:ff00:77', 'lladdr', '33:33:ff:00:00:77', 'dev', 'flannel.1', 'nud', 'noarp'], { netns: ns });
    expect(await kernel.resync()).toBe(0);
    expect(kernel.stats()['unchangedPasses']).toBe(unchanged + 2);
  });

  test('an owner dropped, and two owners claiming one key: the lowest owner key wins until it leaves', async () => {
    kernel.delete('peer 3');
    kernel.set('peer 1', [permanentFdb('flannel.1', mac(2), a4('198.18.0.101'))]); // claims peer 2's MAC
    await kernel.request();
    let now = await held();
    expect(now.some((h) => h.includes('198.19.3.0') || h.includes('2001:2:1:3::') || h.includes(mac(3)))).toBe(false);
    expect(now).toContain(describeEntry(permanentFdb('flannel.1', mac(2), a4('198.18.0.101'))));
    kernel.delete('peer 1');
    await kernel.request();
    now = await held();
    expect(now).toContain(describeEntry(permanentFdb('flannel.1', mac(2), a4('198.18.0.2'))));
    expect(sameEntry(permanentFdb('flannel.1', mac(2), a4('198.18.0.2')), permanentFdb('flannel.1', mac(2), a4('198.18.0.101')))).toBe(false);
  });
});

describe('blackhole routes for our own lease', () => {
  const ns = `fl-${runId()}-bh`;
  let holes: BlackholeRoutes;
  const blackholes = async (): Promise<string[]> => {
    const reader = openKernelPath('iproute2', ns, silentLogger);
    try {
      return (await reader.dump({ routeRoots: [NET4, NET6], devices: [] }, '')).entries!.filter((e) => e.kind === 'route' && e.type === 'blackhole').map((e) => describeEntry(e)).sort();
    } finally {
      reader.close();
    }
  };

  beforeAll(async () => {
    await addLoneNodeNetns(ns);
    // A stale one of ours (subnet-sized, inside the network) and one that is not ours (another size).
    await ipBatch([['route', 'add', 'blackhole', '198.19.6.0/24'], ['route', 'add', 'blackhole', '198.19.7.0/25']], { netns: ns });
    holes = new BlackholeRoutes({ networks: [{ network: NET4, subnetLen: 24 }, { network: NET6, subnetLen: 64 }], log: silentLogger, netns: ns, resyncIntervalMs: 100 });
  });

  afterAll(async () => {
    await holes.close();
    await delNetns(ns);
  });

  test('one per family, stale ones of ours removed, others kept; put back when deleted; moved with the lease', async () => {
    await holes.set([net4(5), net6(5)]);
    expect(await blackholes()).toEqual(['blackhole 198.19.5.0/24', 'blackhole 198.19.7.0/25', 'blackhole 2001:2:1:5::/64']);
    await ipBatch([['route', 'del', 'blackhole', '198.19.5.0/24']], { netns: ns });
    expect(await waitFor(async () => (await blackholes()).includes('blackhole 198.19.5.0/24'), 5000)).toBe(true);
    await holes.set([net4(8), null]);
    expect(await blackholes()).toEqual(['blackhole 198.19.7.0/25', 'blackhole 198.19.8.0/24']);
    expect(holes.stats()['routes']).toBe(1);
  });

  test('a route of the same destination is never replaced: the blackhole is refused beside it (as upstream adds it), retried later', async () => {
    await run(['ip', '-n', ns, 'link', 'add', 'cni0', 'type', 'bridge']);
    await run(['ip', '-n', ns, 'addr', 'add', '198.19.9.1/24', 'dev', 'cni0']);
    await run(['ip', '-n', ns, 'link', 'set', 'cni0', 'up']);
    await holes.set([net4(9), null]);
    const routes = (await run(['ip', '-n', ns, 'route', 'show', '198.19.9.0/24'])).stdout;
    expect(routes).toContain('198.19.9.0/24 dev cni0 proto kernel');
    expect(routes).not.toContain('blackhole');
    expect(holes.stats()['errors']).toBeGreaterThanOrEqual(1);
  });
});
