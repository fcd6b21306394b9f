// src/routes' iproute2 builders and readers against a real kernel, in a throw-away namespace: build,
// apply, read back, re-apply, for both families; and `ip` children that hang are killed.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Ip4Net, parseIp4 } from '../src/common/ip4.js';
import { Ip6Net, parseIp6 } from '../src/common/ip6.js';
import { addrReplaceCommand, readAddrs } from '../src/routes/addr.js';
import { blackholeRoute, permanentFdb, permanentNeighbour, unicastRoute } from '../src/routes/entries.js';
import { fdbDeleteCommand, fdbSetCommand, readFdb } from '../src/routes/fdb.js';
import { bridgeBatch, forceBatch, ip, ipBatch, IpCommandError } from '../src/routes/ip.js';
import { linkDeleteCommand, linkSetCommand, readLink, vxlanAddCommand, vxlanMismatches, type VxlanSpec } from '../src/routes/link.js';
import { neighDeleteCommand, neighSetCommand, readNeighbours } from '../src/routes/neigh.js';
import { readRoutesWithin, routeDeleteCommand, routeGet, routeSetCommand } from '../src/routes/route.js';
import { addLoneNodeNetns, delNetns, run, runId } from '../testbed/netns.js';

const ns = `fl-${runId()}-routes`;
const opts = { netns: ns };
const spec: VxlanSpec = { name: 'flannel.7', vni: 7, local: '198.18.0.1', dev: 'eth0', port: 8472, learning: false, gbp: false, mtu: 1450 };
const PEER_MAC = 'f6:bd:17:d2:cf:1b';
const ALL4 = Ip4Net.parse('0.0.0.0/0');
const OVERLAY = Ip4Net.parse('198.19.0.0/16');
const OVERLAY6 = Ip6Net.parse('2001:2:1::/48');
const net = (cidr: string) => Ip4Net.parse(cidr);
const a4 = parseIp4;

/** A route as the reader returns it: what was put in, with the protocol `ip route replace` records and the default metric. */
const read = <T extends object>(r: T, metric = 0) => ({ ...r, protocol: 3, metric });

beforeAll(async () => {
  await addLoneNodeNetns(ns);
  await run(['ip', '-n', ns, 'addr', 'add', '2001:2::1/64', 'dev', 'eth0', 'nodad']);
});

afterAll(async () => {
  await delNetns(ns);
});

describe('links', () => {
  test('a vxlan device is created with the requested attributes and read back', async () => {
    await ip(vxlanAddCommand({ ...spec, address: '02:11:22:33:44:55' }), opts);
    const link = await readLink('flannel.7', opts);
    expect(link).toMatchObject({ name: 'flannel.7', kind: 'vxlan', mtu: 1450, address: '02:11:22:33:44:55', up: false });
    expect(link!.vxlan).toEqual({ vni: 7, local: '198.18.0.1', dev: 'eth0', port: 8472, learning: false, gbp: false });
    expect(vxlanMismatches(link!, spec)).toEqual([]);
    expect(vxlanMismatches(link!, { ...spec, vni: 8, port: 4789, gbp: true })).toEqual(['vni 7 != 8', 'dstport 8472 != 4789', 'gbp false != true']);
  });

  test('an IPv6 vxlan device reads back its IPv6 tunnel source; a VNI above 16 bits is kept', async () => {
    await ip(vxlanAddCommand({ ...spec, name: 'flannel-v6.70', vni: 70_000, local: '2001:2::1' }), opts);
    const link = await readLink('flannel-v6.70', opts);
    expect(link!.vxlan).toEqual({ vni: 70_000, local: '2001:2::1', dev: 'eth0', port: 8472, learning: false, gbp: false });
    await ip(linkDeleteCommand('flannel-v6.70'), opts);
  });

  test('link set changes MTU and state; a missing link reads as null', async () => {
    await ip(linkSetCommand('flannel.7', { up: true, mtu: 1400 }), opts);
    expect(await readLink('flannel.7', opts)).toMatchObject({ up: true, mtu: 1400 });
    expect(await readLink('nosuchdev', opts)).toBeNull();
    expect((await readLink('eth0', opts))?.vxlan).toBeNull();
  });
});

describe('tables', () => {
  const neighbour = permanentNeighbour('flannel.7', a4('198.19.22.0'), PEER_MAC);
  const fdb = permanentFdb('flannel.7', PEER_MAC, a4('198.18.0.2'));
  const peerRoute = unicastRoute(net('198.19.22.0/24'), 'flannel.7', a4('198.19.22.0'), { onlink: true });
  const apply = async (): Promise<void> => {
    await bridgeBatch([fdbSetCommand(fdb)], opts);
    await ipBatch([addrReplaceCommand('flannel.7', '198.19.69.0/32'), neighSetCommand(neighbour), routeSetCommand(peerRoute)], opts);
  };

  test('one batch programs address, neighbour and route; FDB through bridge -batch', async () => {
    await apply();
    expect((await readAddrs('flannel.7', opts, 4)).map((a) => a.cidr)).toEqual(['198.19.69.0/32']);
    expect(await readNeighbours('flannel.7', opts)).toEqual([neighbour]);
    expect(await readFdb('flannel.7', opts)).toEqual([fdb]);
    expect(await readRoutesWithin(OVERLAY, opts)).toEqual([read(peerRoute)]);
  });

  test('IPv6 neighbours, FDB destinations and routes are read back as they were put in', async () => {
    // An FDB destination is of the device's underlay family: an IPv6 one needs a device over IPv6.
    await ip(vxlanAddCommand({ ...spec, name: 'flannel-v6.7', local: '2001:2::1' }), opts);
    await ip(linkSetCommand('flannel-v6.7', { up: true }), opts);
    const n6 = permanentNeighbour('flannel-v6.7', parseIp6('2001:2:1:5::'), '02:00:00:00:06:05');
    const f6 = permanentFdb('flannel-v6.7', '02:00:00:00:06:05', parseIp6('2001:2::5'));
    const r6 = unicastRoute(Ip6Net.parse('2001:2:1:5::/64'), 'flannel-v6.7', parseIp6('2001:2:1:5::'), { onlink: true });
    await bridgeBatch([fdbSetCommand(f6)], opts);
    await ipBatch([neighSetCommand(n6), routeSetCommand(r6)], opts);
    expect(await readNeighbours('flannel-v6.7', opts)).toEqual([n6]);
    expect(await readFdb('flannel-v6.7', opts)).toEqual([f6]);
    expect(await readRoutesWithin(OVERLAY6, opts)).toEqual([read(r6, 1024)]);
    await bridgeBatch([fdbDeleteCommand(f6)], opts);
    await ipBatch([routeDeleteCommand(r6), neighDeleteCommand(n6)], opts);
    expect(await readRoutesWithin(OVERLAY6, opts)).toEqual([]);
    expect(await readNeighbours('flannel-v6.7', opts)).toEqual([]);
    expect(await readFdb('flannel-v6.7', opts)).toEqual([]);
    await ip(linkDeleteCommand('flannel-v6.7'), opts);
  });

  test('a blackhole is added beside nothing and read back; a second add of it is refused, not a replace', async () => {
    const hole = blackholeRoute(net('198.19.90.0/24'));
    await ipBatch([routeSetCommand(hole)], opts);
    expect(await readRoutesWithin(net('198.19.90.0/24'), opts)).toEqual([read(hole)]);
    const again = await forceBatch('ip', [routeSetCommand(hole)], opts);
    expect(again.failed.get(0)).toMatch(/exists/i);
    await ipBatch([routeDeleteCommand({ ...hole, protocol: 3, metric: 0 })], opts);
    expect(await readRoutesWithin(net('198.19.90.0/24'), opts)).toEqual([]);
  });

  test('a -force batch reports the one line the kernel refused and applies the others', async () => {
    const r = (c: number, via = `198.19.${c}.0`) => unicastRoute(net(`198.19.${c}.0/24`), 'flannel.7', a4(via), { onlink: true });
    const outcome = await forceBatch('ip', [
      routeSetCommand(r(40)),
      // The next hop is the device's own address: the kernel refuses it.
      routeSetCommand(r(41, '198.19.69.0')),
      routeSetCommand(r(42)),
    ], opts);
    expect([...outcome.failed.keys()]).toEqual([1]);
    expect(outcome.failed.get(1)).toMatch(/invalid gateway/i);
    expect(outcome.unknownFrom).toBe(-1);
    const dsts = (await readRoutesWithin(OVERLAY, opts)).map((x) => x.dst.toString());
    expect(dsts).toEqual(expect.arrayContaining(['198.19.40.0/24', '198.19.42.0/24']));
    expect(dsts).not.toContain('198.19.41.0/24');
    await ipBatch([['route', 'del', '198.19.40.0/24'], ['route', 'del', '198.19.42.0/24']], opts);
  });

  test('re-applying the same batch is a no-op (replace verbs)', async () => {
    await apply();
    expect(await readNeighbours('flannel.7', opts)).toHaveLength(1);
    expect(await readFdb('flannel.7', opts)).toHaveLength(1);
    expect(await readRoutesWithin(OVERLAY, opts)).toHaveLength(1);
  });

  test('replace updates an FDB destination and a neighbour MAC in place', async () => {
    await bridgeBatch([fdbSetCommand(permanentFdb('flannel.7', PEER_MAC, a4('198.18.0.3')))], opts);
    await ipBatch([neighSetCommand(permanentNeighbour('flannel.7', a4('198.19.22.0'), '0a:00:00:00:00:01'))], opts);
    expect(await readFdb('flannel.7', opts)).toEqual([permanentFdb('flannel.7', PEER_MAC, a4('198.18.0.3'))]);
    expect(await readNeighbours('flannel.7', opts)).toEqual([permanentNeighbour('flannel.7', a4('198.19.22.0'), '0a:00:00:00:00:01')]);
  });

  test('routes via a gateway on eth0 and route get, both families', async () => {
    const viaEth0 = unicastRoute(net('198.19.33.0/24'), 'eth0', a4('198.18.0.3'));
    await ipBatch([routeSetCommand(viaEth0)], opts);
    const all = await readRoutesWithin(ALL4, opts);
    expect(all).toContainEqual(read(viaEth0));
    expect(all).toContainEqual(expect.objectContaining({ key: 'route 198.18.0.0/24', dev: 'eth0', protocol: 2 }));
    expect(await routeGet(a4('198.18.0.9'), opts)).toEqual({ dev: 'eth0', gateway: null });
    expect(await routeGet(a4('198.19.33.5'), opts)).toEqual({ dev: 'eth0', gateway: a4('198.18.0.3') });
    expect(await routeGet(a4('198.18.1.1'), opts)).toBeNull(); // no default route: unreachable
    expect(await routeGet(parseIp6('2001:2::9'), opts)).toEqual({ dev: 'eth0', gateway: null });
    expect(await routeGet(parseIp6('2001:3::9'), opts)).toBeNull();
  });

  test('deletes remove exactly what they name; a failing line fails the batch, -force applies the rest', async () => {
    await bridgeBatch([fdbDeleteCommand(permanentFdb('flannel.7', PEER_MAC, a4('198.18.0.3')))], opts);
    expect(await readFdb('flannel.7', opts)).toEqual([]);
    const batch = [
      routeDeleteCommand(unicastRoute(net('198.19.99.0/24'), 'flannel.7', a4('198.19.99.0'))), // does not exist
      neighDeleteCommand(neighbour),
      routeDeleteCommand(peerRoute),
    ];
    await expect(ipBatch(batch, { ...opts, force: true })).rejects.toBeInstanceOf(IpCommandError);
    expect(await readNeighbours('flannel.7', opts)).toEqual([]);
    expect((await readRoutesWithin(OVERLAY, opts)).filter((r) => r.dev === 'flannel.7')).toEqual([]);
  });

  test('a device is deleted; words that could break batch syntax are refused', async () => {
    await ip(linkDeleteCommand('flannel.7'), opts);
    expect(await readLink('flannel.7', opts)).toBeNull();
    await expect(ipBatch([['link', 'show', 'dev', 'x"\nlink del eth0']], opts)).rejects.toThrow(/refusing/);
    expect(await readLink('eth0', opts)).not.toBeNull();
  });

  test('an ip child that does not finish in time is killed and fails its call', async () => {
    const started = Date.now();
    const err = await ip(['monitor', 'link'], { ...opts, timeoutMs: 300 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(IpCommandError);
    expect((err as IpCommandError).timedOut).toBe(true);
    expect(Date.now() - started).toBeLessThan(25_000);
    // A batch too: `ip -batch` reading `monitor` never ends on its own.
    const batch = await forceBatch('ip', [['monitor', 'link']], { ...opts, timeoutMs: 300 }).catch((e: unknown) => e);
    expect((batch as IpCommandError).timedOut).toBe(true);
  });
});
