// Choosing the underlay interface and its address in each family, against real interfaces in a
// throw-away namespace: eth0 with a deprecated IPv4 address listed first, and IPv6 addresses that are
// temporary (made by the kernel's privacy extensions from a mngtmpaddr prefix), deprecated, configured
// dynamically, and configured by hand; eth1 on another subnet.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findExternalInterface, type IfaceSelection } from '../src/daemon/iface.js';
import { addNetns, delNetns, run, runId, waitFor } from '../testbed/netns.js';

const ns = `ifc-${runId()}`;
const sel = (over: Partial<IfaceSelection>): IfaceSelection => ({ iface: [], ifaceRegex: [], ifaceCanReach: null, publicIP: null, publicIPv6: null, ...over });
const find = (over: Partial<IfaceSelection>) => findExternalInterface(sel(over), { netns: ns });

interface Addr { local: string; temporary?: boolean; deprecated?: boolean; dynamic?: boolean; tentative?: boolean }
async function addrs(dev: string): Promise<Addr[]> {
  const [link] = JSON.parse((await run(['ip', '-n', ns, '-json', 'addr', 'show', 'dev', dev])).stdout) as { addr_info: Addr[] }[];
  return link!.addr_info;
}

beforeAll(async () => {
  await addNetns(ns);
  const ip = (...args: string[]) => run(['ip', '-n', ns, ...args]);
  for (const dev of ['eth0', 'eth1']) {
    await ip('link', 'add', dev, 'type', 'veth', 'peer', 'name', `${dev}p`);
    await run(['sysctl', '-q', '-w', `net.ipv6.conf.${dev}.use_tempaddr=2`], { netns: ns });
    await ip('link', 'set', dev, 'up');
    await ip('link', 'set', `${dev}p`, 'up');
  }
  // The primary IPv4 address is deprecated (preferred lifetime over): the secondary one is the usable one.
  await ip('addr', 'add', '198.18.0.9/24', 'dev', 'eth0', 'preferred_lft', '0');
  await ip('addr', 'add', '198.18.0.1/24', 'dev', 'eth0');
  // By hand, with temporary addresses made from its prefix; then a SLAAC-like (dynamic) and a deprecated one, listed before it.
  await ip('addr', 'add', '2001:2::5/64', 'dev', 'eth0', 'mngtmpaddr', 'nodad');
  await ip('addr', 'add', '2001:2::8/64', 'dev', 'eth0', 'valid_lft', '3600', 'preferred_lft', '3600', 'nodad');
  await ip('addr', 'add', '2001:2::6/64', 'dev', 'eth0', 'preferred_lft', '0', 'nodad');
  await ip('addr', 'add', '198.18.1.1/24', 'dev', 'eth1');
  await ip('addr', 'add', '2001:2:0:1::1/64', 'dev', 'eth1', 'nodad');
  // The kernel made a temporary address, and it lists it before the one typed by hand.
  expect(await waitFor(async () => (await addrs('eth0')).some((a) => a.temporary && !a.tentative), 5000)).toBe(true);
  const v6 = (await addrs('eth0')).filter((a) => a.local.startsWith('2001:'));
  expect(v6.findIndex((a) => a.temporary)).toBeLessThan(v6.findIndex((a) => a.local === '2001:2::5'));
  expect(v6.findIndex((a) => a.dynamic && !a.temporary)).toBeLessThan(v6.findIndex((a) => a.local === '2001:2::5'));
  expect(v6[0]).toMatchObject({ local: '2001:2::6', deprecated: true });
});

afterAll(async () => {
  await delNetns(ns);
});

describe('the underlay interface and its address in each family', () => {
  it('--iface by name: neither the deprecated IPv4 address nor a temporary, deprecated or dynamic IPv6 one', async () => {
    expect(await find({ iface: ['eth0'] })).toMatchObject({ name: 'eth0', ifaceIP: '198.18.0.1', publicIP: '198.18.0.1', ifaceIPv6: '2001:2::5', publicIPv6: '2001:2::5' });
  });

  it('--iface by IPv6 address: that interface and that address', async () => {
    expect(await find({ iface: ['2001:2:0:1::1'] })).toMatchObject({ name: 'eth1', ifaceIP: '198.18.1.1', ifaceIPv6: '2001:2:0:1::1' });
    expect(await find({ iface: ['2001:2:0:0::8'] })).toMatchObject({ name: 'eth0', ifaceIPv6: '2001:2::8' });
  });

  it('--iface-regex matches IPv6 addresses too, addresses before names (as upstream), never an address that may not be chosen', async () => {
    expect(await find({ ifaceRegex: ['^2001:2:0:1::'] })).toMatchObject({ name: 'eth1', ifaceIP: '198.18.1.1', ifaceIPv6: '2001:2:0:1::1' });
    expect(await find({ ifaceRegex: ['^2001:2::5$'] })).toMatchObject({ name: 'eth0', ifaceIP: '198.18.0.1', ifaceIPv6: '2001:2::5' });
    expect(await find({ ifaceRegex: ['eth0|^198\\.18\\.1\\.'] })).toMatchObject({ name: 'eth1', ifaceIP: '198.18.1.1' });
    expect(await find({ ifaceRegex: ['^eth1$'] })).toMatchObject({ name: 'eth1', ifaceIPv6: '2001:2:0:1::1' });
    await expect(find({ ifaceRegex: ['^2001:2::6$'] })).rejects.toThrow(/--iface-regex: no interface with an IPv4 address matches \^2001:2::6\$/);
    await expect(find({ ifaceRegex: ['^198\\.18\\.0\\.9$'] })).rejects.toThrow(/no interface/);
  });

  it('--iface-can-reach takes an IPv6 address; the route source is used unless it is one that may not be chosen', async () => {
    expect(await find({ ifaceCanReach: '2001:2:0:1::77' })).toMatchObject({ name: 'eth1', ifaceIP: '198.18.1.1', ifaceIPv6: '2001:2:0:1::1' });
    // The kernel prefers the temporary address as the source towards 2001:2::77 (use_tempaddr=2): passed over.
    const route = JSON.parse((await run(['ip', '-n', ns, '-6', '-json', 'route', 'get', '2001:2::77'])).stdout) as { prefsrc?: string }[];
    const temporary = (await addrs('eth0')).filter((a) => a.temporary).map((a) => a.local);
    expect(temporary).toContain(route[0]!.prefsrc);
    expect(await find({ ifaceCanReach: '2001:2::77' })).toMatchObject({ name: 'eth0', ifaceIP: '198.18.0.1', ifaceIPv6: '2001:2::5' });
    expect(await find({ ifaceCanReach: '198.18.1.77' })).toMatchObject({ name: 'eth1', ifaceIP: '198.18.1.1', ifaceIPv6: '2001:2:0:1::1' });
  });

  it('--public-ipv6 wins over the interface address', async () => {
    expect(await find({ iface: ['eth0'], publicIPv6: '2001:2::99' })).toMatchObject({ ifaceIPv6: '2001:2::5', publicIPv6: '2001:2::99' });
  });
});
