// Unit tests (no root, no etcd, no namespaces): the kernel model's plans and claims with the entries
// vxlan peers need, the batch lines and word checks, the text-dump line parsers of both families and
// the attribution of -force batch errors to lines.
import { describe, expect, test } from 'vitest';
import { type VxlanSide, sideEntries } from '../src/backend/vxlan/peers.js';
import { Ip4Net, formatIp4, parseIp4 } from '../src/common/ip4.js';
import { Ip6Net, parseIp6 } from '../src/common/ip6.js';
import { type KernelEntry, type KernelOp, RTPROT_KERNEL, blackholeRoute, permanentFdb, permanentNeighbour, unicastRoute } from '../src/routes/entries.js';
import { parseFdbLine } from '../src/routes/fdb.js';
import { parseBatchErrors } from '../src/routes/ip.js';
import { opCommand } from '../src/routes/iproute2.js';
import { KernelModel } from '../src/routes/model.js';
import { parseNeighLine } from '../src/routes/neigh.js';
import { parseRouteLine } from '../src/routes/route.js';
import { assertSafeWord, cidrWord, deviceWord, ipWord, isCanonicalIp4, macWord, numberWord } from '../src/routes/words.js';

const NETWORK = Ip4Net.parse('198.19.0.0/16');

/** What the vxlan backend calls ours: routes on flannel.1 or gatewayed subnet-sized ones on eth0, in the Network; permanent neighbours and FDB entries of flannel.1. */
function owns(e: KernelEntry): boolean {
  if (e.kind === 'neigh') return e.permanent && e.dev === 'flannel.1';
  if (e.kind === 'fdb') return e.dev === 'flannel.1';
  if (e.protocol === RTPROT_KERNEL || !(e.dst instanceof Ip4Net) || !NETWORK.covers(e.dst)) return false;
  return e.dev === 'flannel.1' || (e.dev === 'eth0' && e.via !== null && e.dst.prefixLen === 24);
}

function side(c: number, opts: { mac?: string; publicIP?: string } = {}): VxlanSide {
  return { family: 4, subnet: Ip4Net.parse(`198.19.${c}.0/24`), publicIP: parseIp4(opts.publicIP ?? `198.18.0.${c}`), mac: opts.mac ?? `02:00:00:00:00:${c.toString(16).padStart(2, '0')}` };
}

/** Sets peer `c` (owner: its subnet) to the entries the vxlan backend would want. */
function setPeer(m: KernelModel, c: number, opts: { mac?: string; publicIP?: string; direct?: boolean } = {}): boolean {
  const s = side(c, opts);
  return m.set(s.subnet.toString(), sideEntries(s, 'flannel.1', opts.direct ? 'eth0' : null));
}

const lines = (ops: KernelOp[]): string[] => ops.map((o) => opCommand(o).join(' '));

/** Applies every op as if the kernel accepted it. */
function acceptAll(model: KernelModel, ops: KernelOp[]): KernelOp[] {
  for (const o of ops) model.applied(o);
  return ops;
}

const route = (text: string) => parseRouteLine(text, text.includes(':') ? 6 : 4)!;
const neigh = (text: string) => parseNeighLine(text, 'flannel.1')!;
const fdb = (text: string) => parseFdbLine(text, 'flannel.1')!;

describe('KernelModel', () => {
  test('a new peer becomes fdb, neighbour and route lines, in that order; a second plan is empty', () => {
    const m = new KernelModel();
    expect(setPeer(m, 2)).toBe(true);
    expect(lines(acceptAll(m, m.plan()))).toEqual([
      'fdb replace 02:00:00:00:00:02 dev flannel.1 dst 198.18.0.2 self permanent',
      'neigh replace 198.19.2.0 lladdr 02:00:00:00:00:02 dev flannel.1 nud permanent',
      'route replace 198.19.2.0/24 via 198.19.2.0 dev flannel.1 onlink',
    ]);
    expect(m.plan()).toEqual([]);
    expect(setPeer(m, 2)).toBe(false);
    expect(m.plan()).toEqual([]);
  });

  test('only the peers touched since the last plan are planned', () => {
    const m = new KernelModel();
    for (let c = 1; c <= 200; c++) setPeer(m, c);
    acceptAll(m, m.plan());
    setPeer(m, 7, { publicIP: '198.18.0.77' });
    m.delete('198.19.9.0/24');
    expect(lines(m.plan())).toEqual([
      'fdb del 02:00:00:00:00:09 dev flannel.1 dst 198.18.0.9 self',
      'fdb replace 02:00:00:00:00:07 dev flannel.1 dst 198.18.0.77 self permanent',
      'route del 198.19.9.0/24 via 198.19.9.0 dev flannel.1',
      'neigh del 198.19.9.0 dev flannel.1',
    ]);
  });

  test('a changed VtepMAC rewrites the neighbour, adds the new FDB entry and deletes the old one', () => {
    const m = new KernelModel();
    setPeer(m, 3);
    acceptAll(m, m.plan());
    expect(setPeer(m, 3, { mac: '0a:00:00:00:00:99' })).toBe(true);
    expect(lines(acceptAll(m, m.plan())).sort()).toEqual([
      'fdb del 02:00:00:00:00:03 dev flannel.1 dst 198.18.0.3 self',
      'fdb replace 0a:00:00:00:00:99 dev flannel.1 dst 198.18.0.3 self permanent',
      'neigh replace 198.19.3.0 lladdr 0a:00:00:00:00:99 dev flannel.1 nud permanent',
    ]);
    expect([...m.programmedEntries()].filter((e) => e.kind === 'fdb')).toEqual([permanentFdb('flannel.1', '0a:00:00:00:00:99', parseIp4('198.18.0.3'))]);
  });

  test('a refused op stays unprogrammed, and the next reconcile plans it again', () => {
    const m = new KernelModel();
    setPeer(m, 4);
    setPeer(m, 5);
    const ops = m.plan();
    for (const o of ops) if (o.entry.key !== 'route 198.19.4.0/24') m.applied(o);
    expect([...m.programmedEntries()].filter((e) => e.kind === 'route').map((e) => e.key)).toEqual(['route 198.19.5.0/24']);
    expect(m.plan()).toEqual([]);
    // The kernel holds what was accepted; the reconcile finds the one missing route.
    const extra = m.resetFromKernel([
      route('198.19.5.0/24 via 198.19.5.0 dev flannel.1 onlink'),
      ...[4, 5].map((c) => neigh(`198.19.${c}.0 lladdr ${side(c).mac} PERMANENT`)),
      ...[4, 5].map((c) => fdb(`${side(c).mac} dst 198.18.0.${c} self permanent`)),
    ], owns);
    expect(extra).toEqual([]);
    expect(lines(m.plan())).toEqual(['route replace 198.19.4.0/24 via 198.19.4.0 dev flannel.1 onlink']);
  });

  test('a reconcile removes leftovers of ours, repairs changed entries and leaves others alone', () => {
    const m = new KernelModel();
    setPeer(m, 2);
    setPeer(m, 6, { direct: true });
    const extra = m.resetFromKernel([
      route('198.19.2.0/24 via 198.19.2.0 dev flannel.1 onlink'),
      route('198.19.77.0/24 via 198.19.77.0 dev flannel.1 onlink'), // a vanished peer
      route('198.19.78.0/24 via 198.18.0.78 dev eth0'), // an old direct route
      route('198.19.1.0/24 dev cni0 proto kernel scope link src 198.19.1.1'), // our pods
      route('198.19.9.0/25 via 198.18.0.9 dev eth0'), // not subnet-sized: not ours
      neigh('198.19.2.0 lladdr 0a:bb:00:00:00:02 PERMANENT'), // wrong MAC
      neigh('198.19.77.0 lladdr 0a:00:00:00:77:01 PERMANENT'),
      neigh('198.19.3.7 lladdr 0a:00:00:00:03:07 REACHABLE'), // learned, not ours
      fdb('02:00:00:00:00:02 dst 198.18.0.2 self permanent'),
      fdb('02:00:00:00:00:02 dst 198.18.0.99 self permanent'), // a second destination
      fdb('0a:00:00:00:77:01 dst 198.18.0.77 self permanent'),
    ], owns);
    expect(lines(extra)).toEqual(['fdb del 02:00:00:00:00:02 dev flannel.1 dst 198.18.0.99 self']);
    expect(lines(m.plan()).sort()).toEqual([
      'fdb del 0a:00:00:00:77:01 dev flannel.1 dst 198.18.0.77 self',
      'neigh del 198.19.77.0 dev flannel.1',
      'neigh replace 198.19.2.0 lladdr 02:00:00:00:00:02 dev flannel.1 nud permanent',
      'route del 198.19.77.0/24 via 198.19.77.0 dev flannel.1',
      'route del 198.19.78.0/24 via 198.18.0.78 dev eth0',
      'route replace 198.19.6.0/24 via 198.18.0.6 dev eth0',
    ]);
  });

  test('two leases with one VtepMAC: the lower subnet wins the FDB entry, deterministically, until it leaves', () => {
    const m = new KernelModel();
    setPeer(m, 20, { mac: '02:aa:00:00:00:01', publicIP: '198.18.0.20' });
    setPeer(m, 10, { mac: '02:aa:00:00:00:01', publicIP: '198.18.0.10' });
    acceptAll(m, m.plan());
    expect(m.programmedEntry('fdb flannel.1 02:aa:00:00:00:01')).toEqual(permanentFdb('flannel.1', '02:aa:00:00:00:01', parseIp4('198.18.0.10')));
    m.delete('198.19.10.0/24');
    expect(lines(acceptAll(m, m.plan()))).toEqual([
      'fdb replace 02:aa:00:00:00:01 dev flannel.1 dst 198.18.0.20 self permanent',
      'route del 198.19.10.0/24 via 198.19.10.0 dev flannel.1',
      'neigh del 198.19.10.0 dev flannel.1',
    ]);
  });

  test('a claim contested by three owners goes to the lowest key whatever the order they came and went in', () => {
    const a = new KernelModel();
    const b = new KernelModel();
    const entries = (dst: string) => [permanentFdb('flannel.1', '02:aa:00:00:00:02', parseIp4(dst))];
    for (const [owner, dst] of [['198.19.30.0/24', '198.18.0.30'], ['198.19.20.0/24', '198.18.0.20'], ['198.19.40.0/24', '198.18.0.40']] as const) a.set(owner, entries(dst));
    for (const [owner, dst] of [['198.19.40.0/24', '198.18.0.40'], ['198.19.30.0/24', '198.18.0.30'], ['198.19.20.0/24', '198.18.0.20']] as const) b.set(owner, entries(dst));
    expect(lines(acceptAll(a, a.plan()))).toEqual(lines(b.plan()));
    expect(a.programmedEntry('fdb flannel.1 02:aa:00:00:00:02')).toEqual(permanentFdb('flannel.1', '02:aa:00:00:00:02', parseIp4('198.18.0.20')));
    a.delete('198.19.20.0/24');
    expect(lines(acceptAll(a, a.plan()))).toEqual(['fdb replace 02:aa:00:00:00:02 dev flannel.1 dst 198.18.0.30 self permanent']);
    a.delete('198.19.40.0/24'); // not the winner: nothing to change
    expect(a.plan()).toEqual([]);
    a.delete('198.19.30.0/24'); // the last one: the entry goes
    expect(lines(a.plan())).toEqual(['fdb del 02:aa:00:00:00:02 dev flannel.1 dst 198.18.0.30 self']);
  });

  test('a value that fails its word check is refused as an op, the others are planned', () => {
    const m = new KernelModel();
    setPeer(m, 2, { mac: '02:00:00:00:00:0G' });
    setPeer(m, 3);
    const ops = m.plan();
    const bad = ops.filter((o) => {
      try {
        opCommand(o);
        return false;
      } catch (err) {
        expect((err as Error).message).toMatch(/refusing/);
        return true;
      }
    });
    // The MAC names the FDB entry and the neighbour: those two are refused, the route and peer 3's entries go.
    expect(bad.map((o) => [o.entry.kind, o.owner])).toEqual([['fdb', '198.19.2.0/24'], ['neigh', '198.19.2.0/24']]);
    expect(ops.filter((o) => !bad.includes(o))).toHaveLength(4);
  });

  test('both families and blackholes: IPv6 entries get IPv6 lines, a blackhole is added, never replaced', () => {
    const m = new KernelModel();
    const v6: VxlanSide = { family: 6, subnet: Ip6Net.parse('2001:2:1:5::/64'), publicIP: parseIp6('2001:2::5'), mac: '02:00:00:00:06:05' };
    m.set('198.19.5.0/24', [...sideEntries(side(5), 'flannel.1', null), ...sideEntries(v6, 'flannel-v6.1', null)]);
    m.set('own', [blackholeRoute(Ip4Net.parse('198.19.1.0/24')), blackholeRoute(Ip6Net.parse('2001:2:1:1::/64'))]);
    expect(lines(acceptAll(m, m.plan()))).toEqual([
      'fdb replace 02:00:00:00:00:05 dev flannel.1 dst 198.18.0.5 self permanent',
      'fdb replace 02:00:00:00:06:05 dev flannel-v6.1 dst 2001:2::5 self permanent',
      'neigh replace 198.19.5.0 lladdr 02:00:00:00:00:05 dev flannel.1 nud permanent',
      'neigh replace 2001:2:1:5:: lladdr 02:00:00:00:06:05 dev flannel-v6.1 nud permanent',
      'route replace 198.19.5.0/24 via 198.19.5.0 dev flannel.1 onlink',
      'route replace 2001:2:1:5::/64 via 2001:2:1:5:: dev flannel-v6.1 onlink',
      'route add blackhole 198.19.1.0/24',
      'route add blackhole 2001:2:1:1::/64',
    ]);
    expect([m.programmedCount('route', 4), m.programmedCount('route', 6), m.programmedCount('fdb')]).toEqual([2, 2, 2]);
    // The kernel's blackhole beside a bridge route of the same destination (IPv6 keeps both): the blackhole is the one wanted.
    m.resetFromKernel([route('2001:2:1:1::/64 dev cni0 proto kernel metric 256 pref medium'), route('blackhole 2001:2:1:1::/64 metric 1024 pref medium')], () => false);
    const replan = lines(m.plan());
    expect(replan).not.toContain('route add blackhole 2001:2:1:1::/64');
    expect(replan).toContain('route add blackhole 198.19.1.0/24');
    m.delete('own');
    m.resetFromKernel([route('blackhole 2001:2:1:1::/64 metric 1024 pref medium')], (e) => e.kind === 'route' && e.type === 'blackhole');
    expect(lines(m.plan()).filter((l) => l.includes('blackhole'))).toEqual(['route del blackhole 2001:2:1:1::/64 proto 3 metric 1024']);
  });

  test('5,000 peers: a full reconcile plan and a one-peer delta are linear, not quadratic', () => {
    const m = new KernelModel();
    const sides = Array.from({ length: 5000 }, (_, i): VxlanSide => ({
      family: 4,
      subnet: new Ip4Net(NETWORK.ip + i * 8, 29),
      publicIP: parseIp4('198.18.0.0'),
      mac: `02:00:00:00:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`,
    }));
    for (const s of sides) m.set(s.subnet.toString(), sideEntries(s, 'flannel.1', null));
    expect(acceptAll(m, m.plan())).toHaveLength(15_000);
    const snapshot = sides.flatMap((s) => [
      { ...unicastRoute(s.subnet, 'flannel.1', s.subnet.ip, { onlink: true }), protocol: 3, metric: 0 },
      permanentNeighbour('flannel.1', s.subnet.ip, s.mac),
      permanentFdb('flannel.1', s.mac, s.publicIP),
    ]);
    expect(m.resetFromKernel(snapshot, owns)).toEqual([]);
    expect(m.plan()).toEqual([]);
    m.delete(sides[42]!.subnet.toString());
    expect(m.plan()).toHaveLength(3);
  });
});

describe('batch words', () => {
  test.each(['198.18.0.1', '0.0.0.0', '255.255.255.255'])('%s is a canonical IPv4 address', (w) => expect(isCanonicalIp4(w)).toBe(true));
  test.each(['198.18.0.1 ', ' 198.18.0.1', '198.18.0.1\n', '198.18.0.01', '198.18.0.256', '198.18.0', '198.18.0.1\u00a0', '１.2.3.4', '198.18.0.1#'])(
    '%j is refused as an IPv4 address',
    (w) => expect(() => ipWord(w)).toThrow(/refusing/),
  );
  test('IPv6 words must be in the kernel\'s own (RFC 5952) form', () => {
    expect(ipWord('2001:2::1')).toBe('2001:2::1');
    expect(cidrWord('2001:2:1:1e::/64')).toBe('2001:2:1:1e::/64');
    for (const w of ['2001:0002::/64', '2001:2:0:0::/64', '2001:2::/129', ' 2001:2::/64', '2001:2::/64#']) expect(() => cidrWord(w)).toThrow(/refusing/);
    for (const w of ['2001:0002::1', '2001:2::1 ', 'fe80::1%eth0', '2001:2:0:0::1', '2001:2::1#']) expect(() => ipWord(w)).toThrow(/refusing/);
  });
  test('CIDR, MAC, device and number words', () => {
    expect(cidrWord('198.19.0.0/16')).toBe('198.19.0.0/16');
    expect(() => cidrWord('198.19.0.0/33')).toThrow(/refusing/);
    expect(() => cidrWord('198.19.300.0/24')).toThrow(/refusing/);
    expect(macWord('f6:bd:17:d2:cf:1b')).toBe('f6:bd:17:d2:cf:1b');
    expect(() => macWord('F6:BD:17:D2:CF:1B')).toThrow(/refusing/);
    expect(() => macWord('f6:bd:17:d2:cf:1b\u001b[2K')).toThrow(/refusing/);
    expect(deviceWord('flannel.1')).toBe('flannel.1');
    expect(() => deviceWord('eth0#x')).toThrow(/refusing/);
    expect(() => deviceWord('a-name-longer-than-15')).toThrow(/refusing/);
    expect(numberWord(8472)).toBe('8472');
    expect(() => numberWord(-1)).toThrow(/refusing/);
  });
  test.each(['#', 'a#b', '"x', "it's", 'a b', 'back\\slash', '', 'tab\there', 'bell\u0007'])('%j is refused in any batch line', (w) =>
    expect(() => assertSafeWord(w)).toThrow(/refusing/),
  );
});

describe('text dump parsers', () => {
  test('routes', () => {
    expect(route('198.19.22.0/24 via 198.19.22.0 dev flannel.1 onlink ')).toEqual({ ...unicastRoute(Ip4Net.parse('198.19.22.0/24'), 'flannel.1', parseIp4('198.19.22.0'), { onlink: true }), protocol: 3, metric: 0 });
    expect(route('198.19.1.0/24 dev cni0 proto kernel scope link src 198.19.1.1 ')).toEqual({ ...unicastRoute(Ip4Net.parse('198.19.1.0/24'), 'cni0'), protocol: RTPROT_KERNEL, metric: 0 });
    expect(route('198.19.3.7 via 198.18.0.3 dev eth0 metric 100')).toMatchObject({ key: 'route 198.19.3.7/32', via: parseIp4('198.18.0.3'), dev: 'eth0', metric: 100 });
    expect(parseRouteLine('unreachable 198.19.5.0/24', 4)).toBeNull();
    expect(parseRouteLine('\tnexthop via 198.18.0.3 dev eth0 weight 1', 4)).toBeNull();
    expect(route('blackhole 198.19.5.0/24 proto static')).toEqual({ ...blackholeRoute(Ip4Net.parse('198.19.5.0/24')), protocol: 4, metric: 0 });
    expect(route('2001:2:1:5::/64 via 2001:2::5 dev eth0 metric 1024 onlink pref medium')).toEqual({ ...unicastRoute(Ip6Net.parse('2001:2:1:5::/64'), 'eth0', parseIp6('2001:2::5'), { onlink: true }), protocol: 3, metric: 1024 });
  });
  test('neighbours', () => {
    expect(neigh('198.19.22.0 lladdr f6:bd:17:d2:cf:1b PERMANENT ')).toEqual(permanentNeighbour('flannel.1', parseIp4('198.19.22.0'), 'f6:bd:17:d2:cf:1b'));
    expect(parseNeighLine('198.19.3.0 FAILED', 'flannel.1')).toBeNull();
    expect(parseNeighLine('', 'flannel.1')).toBeNull();
    expect(neigh('2001:2:1:5:: lladdr 02:00:00:00:06:05 router STALE')).toMatchObject({ key: 'neigh flannel.1 2001:2:1:5::', ip: parseIp6('2001:2:1:5::'), permanent: false });
  });
  test('fdb', () => {
    expect(fdb('f6:bd:17:d2:cf:1b dst 198.18.0.2 self permanent')).toEqual(permanentFdb('flannel.1', 'f6:bd:17:d2:cf:1b', parseIp4('198.18.0.2')));
    expect(parseFdbLine('00:00:00:00:00:00 dst 198.18.0.2 self permanent', 'flannel.1')).toBeNull();
    expect(parseFdbLine('33:33:00:00:00:01 self permanent', 'flannel.1')).toBeNull();
    expect(fdb('02:00:00:00:06:05 dst 2001:2::5 self permanent')).toEqual(permanentFdb('flannel.1', '02:00:00:00:06:05', parseIp6('2001:2::5')));
    expect(formatIp4(fdb('F6:BD:17:D2:CF:1B dst 198.18.0.2 self').dst as number)).toBe('198.18.0.2');
  });
});

describe('-force batch error attribution', () => {
  test('each message goes to the line named after it', () => {
    const out = parseBatchErrors('Error: Nexthop has invalid gateway.\nCommand failed -:2\nRTNETLINK answers: No such process\nCommand failed -:5\n', 1);
    expect(out.failed).toEqual(new Map([[1, 'Error: Nexthop has invalid gateway.'], [4, 'RTNETLINK answers: No such process']]));
    expect(out.unknownFrom).toBe(-1);
  });
  test('a line that ends the batch leaves every later line unknown', () => {
    const out = parseBatchErrors('RTNETLINK answers: File exists\nCommand failed -:3\nError: any valid prefix is expected rather than "x".\n', 255);
    expect(out.failed.get(2)).toMatch(/File exists/);
    expect(out.unknownFrom).toBe(3);
    expect(parseBatchErrors('', 0)).toEqual({ failed: new Map(), unknownFrom: -1 });
    expect(parseBatchErrors('', 1).unknownFrom).toBe(0);
  });
});
