// src/routes against a real kernel, in a throw-away namespace: build, apply, read back, re-apply.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { addrReplaceCommand, listIp4Addrs } from '../src/routes/addr.js';
import { fdbDeleteCommand, fdbReplaceCommand, listFdb, readFdb } from '../src/routes/fdb.js';
import { bridgeBatch, forceBatch, ip, ipBatch, IpCommandError } from '../src/routes/ip.js';
import { linkDeleteCommand, linkSetCommand, readLink, vxlanAddCommand, vxlanMismatches, type VxlanSpec } from '../src/routes/link.js';
import { listNeighbours, neighDeleteCommand, neighReplaceCommand, readNeighbours } from '../src/routes/neigh.js';
import { listRoutes, readRoutesWithin, routeDeleteCommand, routeGet, routeReplaceCommand } from '../src/routes/route.js';
import { addLoneNodeNetns, delNetns, runId } from './harness/netns.js';

const ns = `fl-${runId()}-routes`;
const opts = { netns: ns };
const spec: VxlanSpec = { name: 'flannel.7', vni: 7, local: '198.18.0.1', dev: 'eth0', port: 8472, learning: false, gbp: false, mtu: 1450 };
const PEER_MAC = 'f6:bd:17:d2:cf:1b';

beforeAll(async () => {
  await addLoneNodeNetns(ns);
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

  test('link set changes MTU and state; a missing link reads as null', async () => {
    await ip(linkSetCommand('flannel.7', { up: true, mtu: 1400 }), opts);
    expect(await readLink('flannel.7', opts)).toMatchObject({ up: true, mtu: 1400 });
    expect(await readLink('nosuchdev', opts)).toBeNull();
    expect((await readLink('eth0', opts))?.vxlan).toBeNull();
  });
});

describe('tables', () => {
  const apply = async (): Promise<void> => {
    await bridgeBatch([fdbReplaceCommand('flannel.7', PEER_MAC, '198.18.0.2')], opts);
    await ipBatch([
      addrReplaceCommand('flannel.7', '198.19.69.0/32'),
      neighReplaceCommand('flannel.7', '198.19.22.0', PEER_MAC),
      routeReplaceCommand({ dst: '198.19.22.0/24', via: '198.19.22.0', dev: 'flannel.7', onlink: true }),
    ], opts);
  };

  test('one batch programs address, neighbour and route; FDB through bridge -batch', async () => {
    await apply();
    expect(await listIp4Addrs('flannel.7', opts)).toEqual([{ cidr: '198.19.69.0/32' }]);
    expect(await listNeighbours('flannel.7', opts)).toEqual([{ ip: '198.19.22.0', mac: PEER_MAC, permanent: true }]);
    expect(await listFdb('flannel.7', opts)).toEqual([{ mac: PEER_MAC, dst: '198.18.0.2', permanent: true }]);
    const routes = await listRoutes({ dev: 'flannel.7' }, opts);
    expect(routes).toEqual([{ dst: '198.19.22.0/24', gateway: '198.19.22.0', dev: 'flannel.7', onlink: true, protocol: null }]);
  });

  test('the text dumps read back the same entries as the JSON ones', async () => {
    expect(await readRoutesWithin('198.19.0.0/16', opts)).toEqual((await listRoutes({}, opts)).filter((r) => r.dst.startsWith('198.19.')));
    expect(await readNeighbours('flannel.7', opts)).toEqual(await listNeighbours('flannel.7', opts));
    expect(await readFdb('flannel.7', opts)).toEqual(await listFdb('flannel.7', opts));
    expect(await readFdb('flannel.7', opts)).toHaveLength(1);
  });

  test('a -force batch reports the one line the kernel refused and applies the others', async () => {
    const outcome = await forceBatch('ip', [
      routeReplaceCommand({ dst: '198.19.40.0/24', via: '198.19.40.0', dev: 'flannel.7', onlink: true }),
      // The next hop is the device's own address: the kernel refuses it.
      routeReplaceCommand({ dst: '198.19.41.0/24', via: '198.19.69.0', dev: 'flannel.7', onlink: true }),
      routeReplaceCommand({ dst: '198.19.42.0/24', via: '198.19.42.0', dev: 'flannel.7', onlink: true }),
    ], opts);
    expect([...outcome.failed.keys()]).toEqual([1]);
    expect(outcome.failed.get(1)).toMatch(/invalid gateway/i);
    expect(outcome.unknownFrom).toBe(-1);
    const dsts = (await listRoutes({ dev: 'flannel.7' }, opts)).map((r) => r.dst);
    expect(dsts).toEqual(expect.arrayContaining(['198.19.40.0/24', '198.19.42.0/24']));
    expect(dsts).not.toContain('198.19.41.0/24');
    await ipBatch([['route', 'del', '198.19.40.0/24'], ['route', 'del', '198.19.42.0/24']], opts);
  });

  test('re-applying the same batch is a no-op (replace verbs)', async () => {
    await apply();
    expect(await listNeighbours('flannel.7', opts)).toHaveLength(1);
    expect(await listFdb('flannel.7', opts)).toHaveLength(1);
    expect(await listRoutes({ dev: 'flannel.7' }, opts)).toHaveLength(1);
  });

  test('replace updates an FDB destination and a neighbour MAC in place', async () => {
    await bridgeBatch([fdbReplaceCommand('flannel.7', PEER_MAC, '198.18.0.3')], opts);
    await ipBatch([neighReplaceCommand('flannel.7', '198.19.22.0', '0a:00:00:00:00:01')], opts);
    expect(await listFdb('flannel.7', opts)).toEqual([{ mac: PEER_MAC, dst: '198.18.0.3', permanent: true }]);
    expect(await listNeighbours('flannel.7', opts)).toEqual([{ ip: '198.19.22.0', mac: '0a:00:00:00:00:01', permanent: true }]);
  });

  test('routes via a gateway on eth0 and route get', async () => {
    await ipBatch([routeReplaceCommand({ dst: '198.19.33.0/24', via: '198.18.0.3', dev: 'eth0' })], opts);
    const all = await listRoutes({}, opts);
    expect(all).toContainEqual({ dst: '198.19.33.0/24', gateway: '198.18.0.3', dev: 'eth0', onlink: false, protocol: null });
    expect(all).toContainEqual(expect.objectContaining({ dst: '198.18.0.0/24', dev: 'eth0', protocol: 'kernel' }));
    expect(await routeGet('198.18.0.9', opts)).toEqual({ dev: 'eth0', gateway: null });
    expect(await routeGet('198.19.33.5', opts)).toEqual({ dev: 'eth0', gateway: '198.18.0.3' });
    expect(await routeGet('198.18.1.1', opts)).toBeNull(); // no default route: unreachable
  });

  test('deletes remove exactly what they name; a failing line fails the batch, -force applies the rest', async () => {
    await bridgeBatch([fdbDeleteCommand('flannel.7', PEER_MAC, '198.18.0.3')], opts);
    expect(await listFdb('flannel.7', opts)).toEqual([]);
    const batch = [
      routeDeleteCommand({ dst: '198.19.99.0/24', via: '198.19.99.0', dev: 'flannel.7' }), // does not exist
      neighDeleteCommand('flannel.7', '198.19.22.0'),
      routeDeleteCommand({ dst: '198.19.22.0/24', via: '198.19.22.0', dev: 'flannel.7' }),
    ];
    await expect(ipBatch(batch, { ...opts, force: true })).rejects.toBeInstanceOf(IpCommandError);
    expect(await listNeighbours('flannel.7', opts)).toEqual([]);
    expect(await listRoutes({ dev: 'flannel.7' }, opts)).toEqual([]);
  });

  test('a device is deleted; words that could break batch syntax are refused', async () => {
    await ip(linkDeleteCommand('flannel.7'), opts);
    expect(await readLink('flannel.7', opts)).toBeNull();
    await expect(ipBatch([['link', 'show', 'dev', 'x"\nlink del eth0']], opts)).rejects.toThrow(/refusing/);
    expect(await readLink('eth0', opts)).not.toBeNull();
  });
});
