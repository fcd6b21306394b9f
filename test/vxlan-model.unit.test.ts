// Unit tests (no root, no etcd, no namespaces): the vxlan model's plans, the batch word checks,
// the text-dump line parsers and the attribution of -force batch errors to lines.
import { describe, expect, test } from 'vitest';
import { PeerModel, type KernelOp } from '../src/backend/vxlan/model.js';
import type { Peer } from '../src/backend/vxlan/peers.js';
import { parseFdbLine } from '../src/routes/fdb.js';
import { parseBatchErrors } from '../src/routes/ip.js';
import { parseNeighLine } from '../src/routes/neigh.js';
import { parseRouteLine } from '../src/routes/route.js';
import { assertSafeWord, cidrWord, deviceWord, ipWord, isCanonicalIp4, macWord, numberWord } from '../src/routes/words.js';
import { Ip4Net, formatIp4 } from '../src/common/ip4.js';

const ctx = { device: 'flannel.1', extIface: 'eth0', network: Ip4Net.parse('198.19.0.0/16'), subnetLen: 24 };

function peer(c: number, opts: { mac?: string; publicIP?: string; direct?: boolean } = {}): Peer {
  return {
    subnet: Ip4Net.parse(`198.19.${c}.0/24`),
    publicIP: opts.publicIP ?? `198.18.0.${c}`,
    vtepMac: opts.mac ?? `02:00:00:00:00:${c.toString(16).padStart(2, '0')}`,
    direct: opts.direct ? { dev: 'eth0' } : null,
  };
}

const lines = (ops: KernelOp[]): string[] => ops.map((o) => o.words!.join(' '));

/** Applies every op as if the kernel accepted it. */
function acceptAll(model: PeerModel, ops: KernelOp[]): KernelOp[] {
  for (const o of ops) model.applied(o);
  return ops;
}

describe('PeerModel', () => {
  test('a new peer becomes fdb, neighbour and route lines, in that order; a second plan is empty', () => {
    const m = new PeerModel(ctx);
    expect(m.setPeer(peer(2))).toBe('added');
    expect(lines(acceptAll(m, m.plan()))).toEqual([
      'fdb replace 02:00:00:00:00:02 dev flannel.1 dst 198.18.0.2 self permanent',
      'neigh replace 198.19.2.0 lladdr 02:00:00:00:00:02 dev flannel.1 nud permanent',
      'route replace 198.19.2.0/24 via 198.19.2.0 dev flannel.1 onlink',
    ]);
    expect(m.plan()).toEqual([]);
    expect(m.setPeer(peer(2))).toBeNull();
    expect(m.plan()).toEqual([]);
  });

  test('only the peers touched since the last plan are planned', () => {
    const m = new PeerModel(ctx);
    for (let c = 1; c <= 200; c++) m.setPeer(peer(c));
    acceptAll(m, m.plan());
    m.setPeer(peer(7, { publicIP: '198.18.0.77' }));
    m.removePeer('198.19.9.0/24');
    expect(lines(m.plan())).toEqual([
      'fdb del 02:00:00:00:00:09 dev flannel.1 dst 198.18.0.9 self',
      'fdb replace 02:00:00:00:00:07 dev flannel.1 dst 198.18.0.77 self permanent',
      'route del 198.19.9.0/24 via 198.19.9.0 dev flannel.1',
      'neigh del 198.19.9.0 dev flannel.1',
    ]);
  });

  test('a changed VtepMAC rewrites the neighbour, adds the new FDB entry and deletes the old one', () => {
    const m = new PeerModel(ctx);
    m.setPeer(peer(3));
    acceptAll(m, m.plan());
    expect(m.setPeer(peer(3, { mac: '0a:00:00:00:00:99' }))).toBe('updated');
    expect(lines(acceptAll(m, m.plan())).sort()).toEqual([
      'fdb del 02:00:00:00:00:03 dev flannel.1 dst 198.18.0.3 self',
      'fdb replace 0a:00:00:00:00:99 dev flannel.1 dst 198.18.0.3 self permanent',
      'neigh replace 198.19.3.0 lladdr 0a:00:00:00:00:99 dev flannel.1 nud permanent',
    ]);
    expect(m.programmed.fdb).toEqual(new Map([['0a:00:00:00:00:99', '198.18.0.3']]));
  });

  test('a refused op stays unprogrammed, and the next reconcile plans it again', () => {
    const m = new PeerModel(ctx);
    m.setPeer(peer(4));
    m.setPeer(peer(5));
    const ops = m.plan();
    for (const o of ops) if (o.key !== '198.19.4.0/24') m.applied(o);
    expect([...m.programmed.routes.keys()]).toEqual(['198.19.5.0/24']);
    expect(m.plan()).toEqual([]);
    // The kernel holds what was accepted; the reconcile finds the one missing route.
    const extra = m.resetFromKernel({
      routes: [{ dst: '198.19.5.0/24', gateway: '198.19.5.0', dev: 'flannel.1', onlink: true, protocol: null }],
      neighs: [4, 5].map((c) => ({ ip: `198.19.${c}.0`, mac: peer(c).vtepMac, permanent: true })),
      fdb: [4, 5].map((c) => ({ mac: peer(c).vtepMac, dst: `198.18.0.${c}`, permanent: true })),
    });
    expect(extra).toEqual([]);
    expect(lines(m.plan())).toEqual(['route replace 198.19.4.0/24 via 198.19.4.0 dev flannel.1 onlink']);
  });

  test('a reconcile removes leftovers of ours, repairs changed entries and leaves others alone', () => {
    const m = new PeerModel(ctx);
    m.setPeer(peer(2));
    m.setPeer(peer(6, { direct: true }));
    const extra = m.resetFromKernel({
      routes: [
        { dst: '198.19.2.0/24', gateway: '198.19.2.0', dev: 'flannel.1', onlink: true, protocol: null },
        { dst: '198.19.77.0/24', gateway: '198.19.77.0', dev: 'flannel.1', onlink: true, protocol: null }, // a vanished peer
        { dst: '198.19.78.0/24', gateway: '198.18.0.78', dev: 'eth0', onlink: false, protocol: null }, // an old direct route
        { dst: '198.19.1.0/24', gateway: null, dev: 'cni0', onlink: false, protocol: 'kernel' }, // our pods
        { dst: '198.19.9.0/25', gateway: '198.18.0.9', dev: 'eth0', onlink: false, protocol: null }, // not subnet-sized: not ours
      ],
      neighs: [
        { ip: '198.19.2.0', mac: '0a:bb:00:00:00:02', permanent: true }, // wrong MAC
        { ip: '198.19.77.0', mac: '0a:00:00:00:77:01', permanent: true },
        { ip: '198.19.3.7', mac: null, permanent: false }, // learned, not ours
      ],
      fdb: [
        { mac: '02:00:00:00:00:02', dst: '198.18.0.2', permanent: true },
        { mac: '02:00:00:00:00:02', dst: '198.18.0.99', permanent: true }, // a second destination
        { mac: '0a:00:00:00:77:01', dst: '198.18.0.77', permanent: true },
      ],
    });
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
    const m = new PeerModel(ctx);
    m.setPeer(peer(20, { mac: '02:aa:00:00:00:01', publicIP: '198.18.0.20' }));
    m.setPeer(peer(10, { mac: '02:aa:00:00:00:01', publicIP: '198.18.0.10' }));
    acceptAll(m, m.plan());
    expect(m.programmed.fdb.get('02:aa:00:00:00:01')).toBe('198.18.0.10');
    m.removePeer('198.19.10.0/24');
    expect(lines(acceptAll(m, m.plan()))).toEqual([
      'fdb replace 02:aa:00:00:00:01 dev flannel.1 dst 198.18.0.20 self permanent',
      'route del 198.19.10.0/24 via 198.19.10.0 dev flannel.1',
      'neigh del 198.19.10.0 dev flannel.1',
    ]);
  });

  test('a value that fails its word check is refused as an op, the others are planned', () => {
    const m = new PeerModel(ctx);
    m.setPeer(peer(2, { publicIP: '198.18.0.2 ' }));
    m.setPeer(peer(3));
    const ops = m.plan();
    const bad = ops.filter((o) => o.words === null);
    expect(bad.map((o) => [o.kind, o.subnet])).toEqual([['fdb', '198.19.2.0/24']]);
    expect(bad[0]!.invalid).toMatch(/refusing/);
    expect(ops.filter((o) => o.words !== null)).toHaveLength(5);
  });

  test('5,000 peers: a full reconcile plan and a one-peer delta are linear, not quadratic', () => {
    const m = new PeerModel(ctx);
    const peers = Array.from({ length: 5000 }, (_, i) => ({ ...peer(0), subnet: new Ip4Net(Ip4Net.parse('198.19.0.0/16').ip + i * 8, 29), vtepMac: `02:00:00:00:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}` }));
    for (const p of peers) m.setPeer(p);
    expect(acceptAll(m, m.plan())).toHaveLength(15_000);
    const snapshot = {
      routes: peers.map((p) => ({ dst: p.subnet.toString(), gateway: formatIp4(p.subnet.ip), dev: 'flannel.1', onlink: true, protocol: null })),
      neighs: peers.map((p) => ({ ip: formatIp4(p.subnet.ip), mac: p.vtepMac, permanent: true })),
      fdb: peers.map((p) => ({ mac: p.vtepMac, dst: p.publicIP, permanent: true })),
    };
    expect(m.resetFromKernel(snapshot)).toEqual([]);
    expect(m.plan()).toEqual([]);
    m.removePeer(peers[42]!.subnet.toString());
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
    expect(parseRouteLine('198.19.22.0/24 via 198.19.22.0 dev flannel.1 onlink ')).toEqual({ dst: '198.19.22.0/24', gateway: '198.19.22.0', dev: 'flannel.1', onlink: true, protocol: null });
    expect(parseRouteLine('198.19.1.0/24 dev cni0 proto kernel scope link src 198.19.1.1 ')).toEqual({ dst: '198.19.1.0/24', gateway: null, dev: 'cni0', onlink: false, protocol: 'kernel' });
    expect(parseRouteLine('198.19.3.7 via 198.18.0.3 dev eth0 metric 100')).toMatchObject({ dst: '198.19.3.7/32', gateway: '198.18.0.3', dev: 'eth0' });
    expect(parseRouteLine('unreachable 198.19.5.0/24')).toBeNull();
    expect(parseRouteLine('\tnexthop via 198.18.0.3 dev eth0 weight 1')).toBeNull();
  });
  test('neighbours', () => {
    expect(parseNeighLine('198.19.22.0 lladdr f6:bd:17:d2:cf:1b PERMANENT ')).toEqual({ ip: '198.19.22.0', mac: 'f6:bd:17:d2:cf:1b', permanent: true });
    expect(parseNeighLine('198.19.3.0 FAILED')).toEqual({ ip: '198.19.3.0', mac: null, permanent: false });
    expect(parseNeighLine('')).toBeNull();
  });
  test('fdb', () => {
    expect(parseFdbLine('f6:bd:17:d2:cf:1b dst 198.18.0.2 self permanent')).toEqual({ mac: 'f6:bd:17:d2:cf:1b', dst: '198.18.0.2', permanent: true });
    expect(parseFdbLine('00:00:00:00:00:00 dst 198.18.0.2 self permanent')).toBeNull();
    expect(parseFdbLine('33:33:00:00:00:01 self permanent')).toBeNull();
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
