// A network that contains the node's own underlay address or an etcd endpoint's is an invalid config,
// named with both (the daemon side of it, waiting for a fixed config, is in test/config-underlay.test.ts).
import { describe, expect, test } from 'vitest';
import type { ExternalInterface } from '../src/backend/backend.js';
import { checkUnderlayOutsideNetwork, endpointHost, underlayAddresses } from '../src/daemon/underlay-overlap.js';
import { ConfigError, parseNetworkConfig } from '../src/subnet/config.js';

const IFACE: ExternalInterface = { name: 'eth0', ifaceIP: '198.18.0.1', publicIP: '198.18.0.1', mtu: 1500, ifaceIPv6: '2001:2::1', publicIPv6: '2001:2::1' };
const config = (extra: Record<string, unknown>) => parseNetworkConfig(JSON.stringify({ Backend: { Type: 'vxlan' }, ...extra }));

function refusal(fn: () => void): ConfigError {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('accepted');
}

describe('endpointHost', () => {
  test('the host of each form etcd endpoints come in', () => {
    expect(endpointHost('http://198.18.0.254:2379')).toBe('198.18.0.254');
    expect(endpointHost('https://[2001:2::fe]:2379')).toBe('2001:2::fe');
    expect(endpointHost('198.18.0.254:2379')).toBe('198.18.0.254');
    expect(endpointHost('https://etcd-1.example:2379')).toBe('etcd-1.example');
    expect(endpointHost('http://')).toBeNull();
  });
});

describe('underlayAddresses', () => {
  test("the node's addresses once each, a distinct public address, and every endpoint's", async () => {
    const addrs = await underlayAddresses({ ...IFACE, publicIP: '198.18.0.99' }, ['http://198.18.0.254:2379', 'https://[2001:2::fe]:2379', '198.18.0.1:2379']);
    expect(addrs).toEqual([
      { ip: '198.18.0.1', what: "this node's underlay address (eth0)" },
      { ip: '198.18.0.99', what: "this node's public address (--public-ip)" },
      { ip: '2001:2::1', what: "this node's underlay address (eth0)" },
      { ip: '198.18.0.254', what: 'etcd endpoint http://198.18.0.254:2379' },
      { ip: '2001:2::fe', what: 'etcd endpoint https://[2001:2::fe]:2379' },
    ]);
  });

  test('an endpoint given by name is resolved', async () => {
    const addrs = await underlayAddresses(IFACE, ['http://localhost:2379']);
    expect(addrs).toContainEqual({ ip: '127.0.0.1', what: 'etcd endpoint http://localhost:2379' }); // from /etc/hosts
  });

  test('a name that does not resolve is left out, without failing', async () => {
    const addrs = await underlayAddresses(IFACE, ['http://no-such-host.invalid:2379']);
    expect(addrs.map((a) => a.ip)).toEqual(['198.18.0.1', '2001:2::1']);
  });
});

describe('checkUnderlayOutsideNetwork', () => {
  const addrs = [
    { ip: '198.18.0.1', what: "this node's underlay address (eth0)" },
    { ip: '2001:2::1', what: "this node's underlay address (eth0)" },
    { ip: '198.18.0.254', what: 'etcd endpoint http://198.18.0.254:2379' },
  ];

  test("a Network containing the node's underlay address: refused, naming the network and the address", () => {
    const err = refusal(() => checkUnderlayOutsideNetwork(config({ Network: '198.18.0.0/15' }), addrs));
    expect(err.field).toBe('Network');
    expect(err.reason).toBe(
      "198.18.0.0/15 contains 198.18.0.1, this node's underlay address (eth0): the node would route it into the overlay; choose a network that leaves the underlay and etcd outside",
    );
  });

  test("a Network containing only an etcd endpoint's address: refused, naming the endpoint", () => {
    const err = refusal(() => checkUnderlayOutsideNetwork(config({ Network: '198.18.0.128/25' }), addrs));
    expect(err.field).toBe('Network');
    expect(err.reason).toMatch(/^198\.18\.0\.128\/25 contains 198\.18\.0\.254, etcd endpoint http:\/\/198\.18\.0\.254:2379:/);
  });

  test('an IPv6Network containing the IPv6 underlay address: refused under IPv6Network', () => {
    const err = refusal(() => checkUnderlayOutsideNetwork(config({ Network: '198.19.0.0/16', EnableIPv6: true, IPv6Network: '2001:2::/56' }), addrs));
    expect(err.field).toBe('IPv6Network');
    expect(err.reason).toMatch(/^2001:2::\/56 contains 2001:2::1, this node's underlay address \(eth0\)/);
  });

  test('networks that leave them all outside are accepted', () => {
    expect(() => checkUnderlayOutsideNetwork(config({ Network: '198.19.0.0/16', EnableIPv6: true, IPv6Network: '2001:2:1::/48' }), addrs)).not.toThrow();
    // The last address before the network and the first after it are outside.
    expect(() => checkUnderlayOutsideNetwork(config({ Network: '198.18.0.0/25' }), [{ ip: '198.18.0.128', what: 'x' }])).not.toThrow();
  });
});
