// The vxlan backend's two ways into the kernel — rtnetlink from the addon and `ip`/`bridge -force
// -batch` — must leave identical tables, isolate a refused entry the same way, and repair alike.
// Each runs in its own throw-away namespace with a veth "underlay".
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { BackendContext } from '../src/backend/backend.js';
import { VxlanBackend } from '../src/backend/vxlan/vxlan-backend.js';
import { silentLogger } from '../src/common/log.js';
import { RTPROT_KERNEL, formatIp } from '../src/routes/entries.js';
import { readFdb } from '../src/routes/fdb.js';
import { ip, ipBatch } from '../src/routes/ip.js';
import { readNeighbours } from '../src/routes/neigh.js';
import { loadNetlink } from '../src/routes/netlink.js';
import { readRoutesWithin } from '../src/routes/route.js';
import { parseNetworkConfig, type VxlanBackendConfig } from '../src/subnet/config.js';
import { Ip4Net, formatIp4 } from '../src/common/ip4.js';
import type { Lease } from '../src/subnet/lease.js';
import { added } from './harness/leases.js';
import { addLoneNodeNetns, delNetns, run, runId } from '../testbed/netns.js';

const PEERS = 300;
const network = parseNetworkConfig(JSON.stringify({ Network: '198.19.0.0/16', SubnetLen: 28, Backend: { Type: 'vxlan' } }));
const subnet = (i: number): Ip4Net => new Ip4Net(network.network.ip + (16 + i) * 16, 28);
const mac = (i: number): string => `02:7e:00:00:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`;
const lease = (i: number, publicIP = `198.18.0.${10 + (i % 200)}`): Lease => ({
  subnet: subnet(i), attrs: { publicIP, publicIPv6: null, backend: { type: 'vxlan', vtep: { vni: 1, mac: mac(i) }, vtepV6: null } }, expiration: null,
});

async function tables(ns: string) {
  const opts = { netns: ns };
  const [routes, neighs, fdb] = await Promise.all([readRoutesWithin(network.network, opts), readNeighbours('flannel.1', opts), readFdb('flannel.1', opts)]);
  return {
    routes: routes.filter((r) => r.dev === 'flannel.1' && r.protocol !== RTPROT_KERNEL).map((r) => `${r.dst} via ${r.via === null ? null : formatIp(r.via)} onlink=${r.onlink}`).sort(),
    neighs: neighs.filter((n) => n.permanent).map((n) => `${formatIp(n.ip)} ${n.mac}`).sort(),
    fdb: fdb.map((e) => `${e.mac} ${formatIp(e.dst)} ${e.permanent}`).sort(),
  };
}

const paths = ['netlink', 'iproute2'] as const;
const nss = new Map<string, string>();
const backends: VxlanBackend[] = [];

beforeAll(async () => {
  for (const path of paths) {
    const ns = `fl-${runId()}-kp-${path}`;
    nss.set(path, ns);
    await addLoneNodeNetns(ns);
    // A stray local address: the kernel refuses an onlink route whose next hop is local.
    await run(['ip', '-n', ns, 'addr', 'add', `${formatIp4(subnet(7).ip)}/32`, 'dev', 'lo']);
  }
});

afterAll(async () => {
  await Promise.all(backends.map((b) => b.close()));
  for (const ns of nss.values()) await delNetns(ns);
});

describe.each(paths)('%s', (path) => {
  test('the addon is built (npm install) and is the default', () => {
    expect(loadNetlink()).not.toBeNull();
  });

  test(`${PEERS} peers, one refused route: every other entry goes in, the refused one is counted and retried`, async () => {
    const ns = nss.get(path)!;
    const ctx: BackendContext = { extIface: { name: 'eth0', ifaceIP: '198.18.0.1', publicIP: '198.18.0.1', mtu: 1500 }, network, log: silentLogger };
    const b = new VxlanBackend(ctx, network.backend as VxlanBackendConfig, { netns: ns, resyncIntervalMs: 0, kernelPath: path });
    backends.push(b);
    const ann = await b.prepare();
    await b.setOwnLease({ subnet: subnet(-1), attrs: { publicIP: '198.18.0.1', publicIPv6: null, backend: ann.backend }, expiration: null });
    await b.handleLeaseEvents(Array.from({ length: PEERS }, (_, i) => added(lease(i))));
    await b.settled();
    expect(b.stats()).toMatchObject({ netlink: path === 'netlink' ? 1 : 0, peers: PEERS, programmedRoutes: PEERS - 1, errors: 1 });
    const t = await tables(ns);
    expect(t.routes).toHaveLength(PEERS - 1);
    expect(t.routes).not.toContain(`${subnet(7)} via ${formatIp4(subnet(7).ip)} onlink=true`);
    expect(t.routes).toContain(`${subnet(8)} via ${formatIp4(subnet(8).ip)} onlink=true`);
    expect(t.neighs).toHaveLength(PEERS);
    expect(t.fdb).toHaveLength(PEERS);

    // A resync retries the refused route (refused again while the address is there), and programs
    // it once the address is gone; a change by hand is repaired on the way.
    expect(await b.resync()).toBe(0);
    expect(b.stats()['errors']).toBe(2);
    await ipBatch([['addr', 'del', `${formatIp4(subnet(7).ip)}/32`, 'dev', 'lo'], ['route', 'del', subnet(3).toString()]], { netns: ns });
    await ip(['neigh', 'replace', formatIp4(subnet(4).ip), 'lladdr', '0a:00:00:00:00:04', 'dev', 'flannel.1', 'nud', 'permanent'], { netns: ns });
    expect(await b.resync()).toBe(3);
    expect((await tables(ns)).routes).toHaveLength(PEERS);
    expect((await tables(ns)).neighs).toContain(`${formatIp4(subnet(4).ip)} ${mac(4)}`);
    // The next pass compares everything and finds nothing to do; the one after it sees the kernel
    // exactly as that pass left it and skips the compare.
    const unchanged = b.stats()['unchangedPasses']!;
    expect(await b.resync()).toBe(0);
    expect(b.stats()['unchangedPasses']).toBe(unchanged);
    expect(await b.resync()).toBe(0);
    expect(b.stats()['unchangedPasses']).toBe(unchanged + 1);

    // Departures and a moved peer.
    await b.handleLeaseEvents([{ type: 'removed', lease: lease(0) }, added(lease(1, '198.18.0.222'))]);
    await b.settled();
    const after = await tables(ns);
    expect(after.routes).toHaveLength(PEERS - 1);
    expect(after.fdb).toContain(`${mac(1)} 198.18.0.222 true`);
    expect(after.fdb.some((e) => e.startsWith(mac(0)))).toBe(false);

    // Our node moves to a new subnet: the device is re-addressed without ever being left without
    // an address (which would flush every route through it), so nothing needs repairing.
    const repairs = b.stats()['repairs']!;
    await b.setOwnLease({ subnet: subnet(-2), attrs: { publicIP: '198.18.0.1', publicIPv6: null, backend: ann.backend }, expiration: null });
    expect(b.stats()['repairs']).toBe(repairs);
    expect((await tables(ns)).routes).toHaveLength(PEERS - 1);
  });
});

test('both paths leave identical tables', async () => {
  expect(await tables(nss.get('netlink')!)).toEqual(await tables(nss.get('iproute2')!));
});
