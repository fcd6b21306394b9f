import { describe, expect, it } from 'vitest';
import { ConfigError, candidateSubnets, checkNetworkConfig, formatNetworkConfig, parseNetworkConfig, sameNetwork } from '../src/subnet/config.js';
import { formatIp4 } from '../src/common/ip4.js';

function expectConfigError(json: unknown, field: string, reason: RegExp): void {
  const text = typeof json === 'string' ? json : JSON.stringify(json);
  let caught: unknown;
  try {
    parseNetworkConfig(text);
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(ConfigError);
  expect((caught as ConfigError).field).toBe(field);
  expect((caught as ConfigError).reason).toMatch(reason);
}

describe('network config defaults (as upstream)', () => {
  it('gives /24 subnets, skips the first subnet, ends at the last, and defaults to udp', () => {
    const c = parseNetworkConfig('{"Network":"198.19.0.0/16"}');
    expect(c.network.toString()).toBe('198.19.0.0/16');
    expect(c.subnetLen).toBe(24);
    expect(formatIp4(c.subnetMin)).toBe('198.19.1.0');
    expect(formatIp4(c.subnetMax)).toBe('198.19.255.0');
    expect(c.backend).toEqual({ type: 'udp', port: 8285 });
  });

  it('splits a network smaller than a /22 into quarters', () => {
    const c = parseNetworkConfig('{"Network":"198.19.0.0/26"}');
    expect(c.subnetLen).toBe(28);
    expect(formatIp4(c.subnetMin)).toBe('198.19.0.16');
    expect(formatIp4(c.subnetMax)).toBe('198.19.0.48');
    expect([...candidateSubnets(c)].map(String)).toEqual(['198.19.0.16/28', '198.19.0.32/28', '198.19.0.48/28']);
  });

  it('masks host bits in Network, as upstream does', () => {
    expect(parseNetworkConfig('{"Network":"198.19.3.7/16"}').network.toString()).toBe('198.19.0.0/16');
  });

  it('a /22 still gets /24 subnets', () => {
    expect(parseNetworkConfig('{"Network":"198.19.4.0/22"}').subnetLen).toBe(24);
  });

  it('fills vxlan defaults and honours explicit keys', () => {
    expect(parseNetworkConfig('{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}').backend).toEqual({
      type: 'vxlan', vni: 1, port: 8472, gbp: false, directRouting: false, mtu: null,
    });
    const c = parseNetworkConfig(
      '{"Network":"198.19.0.0/16","SubnetLen":26,"SubnetMin":"198.19.8.0","SubnetMax":"198.19.9.192",' +
        '"Backend":{"Type":"vxlan","VNI":42,"Port":4789,"GBP":true,"DirectRouting":true,"MTU":1400}}',
    );
    expect(c.subnetLen).toBe(26);
    expect(formatIp4(c.subnetMin)).toBe('198.19.8.0');
    expect(formatIp4(c.subnetMax)).toBe('198.19.9.192');
    expect(c.backend).toEqual({ type: 'vxlan', vni: 42, port: 4789, gbp: true, directRouting: true, mtu: 1400 });
    expect([...candidateSubnets(c)]).toHaveLength(8);
  });

  it('udp Port is honoured and Type is case-insensitive', () => {
    expect(parseNetworkConfig('{"Network":"198.19.0.0/16","Backend":{"Type":"UDP","Port":9000}}').backend).toEqual({ type: 'udp', port: 9000 });
  });
});

describe('network config validation names the field', () => {
  it.each([
    ['not json {', '(json)', /not valid JSON/],
    [[1, 2], '(json)', /JSON object/],
    [{}, 'Network', /required/],
    [{ Network: 42 }, 'Network', /CIDR string/],
    [{ Network: '198.19.0.0' }, 'Network', /not an IPv4 CIDR/],
    [{ Network: '198.19.0.0/29' }, 'Network', /too small/],
    [{ Network: '198.19.0.0/16', SubnetLen: 31 }, 'SubnetLen', /\/30 or shorter/],
    [{ Network: '198.19.0.0/24', SubnetLen: 25 }, 'SubnetLen', /at least four/],
    [{ Network: '198.19.0.0/16', SubnetLen: '24' }, 'SubnetLen', /integer/],
    [{ Network: '198.19.0.0/16', SubnetMin: '198.20.0.0' }, 'SubnetMin', /not inside Network/],
    [{ Network: '198.19.0.0/16', SubnetMax: '198.19.3.7' }, 'SubnetMax', /boundary/],
    [{ Network: '198.19.0.0/16', SubnetMin: 'nope' }, 'SubnetMin', /not an IPv4 address/],
    [{ Network: '198.19.0.0/16', SubnetMin: '198.19.9.0', SubnetMax: '198.19.3.0' }, 'SubnetMin', /above SubnetMax/],
    [{ Network: '198.19.0.0/16', Backend: 'vxlan' }, 'Backend', /JSON object/],
    [{ Network: '198.19.0.0/16', Backend: { Type: 'ipsec' } }, 'Backend.Type', /unknown backend "ipsec"/],
    [{ Network: '198.19.0.0/16', Backend: { Type: 7 } }, 'Backend.Type', /string/],
    [{ Network: '198.19.0.0/16', Backend: { Type: 'vxlan', VNI: 0 } }, 'Backend.VNI', /between 1 and 16777215/],
    [{ Network: '198.19.0.0/16', Backend: { Type: 'vxlan', VNI: 1.5 } }, 'Backend.VNI', /integer/],
    [{ Network: '198.19.0.0/16', Backend: { Type: 'vxlan', Port: 70000 } }, 'Backend.Port', /between/],
    [{ Network: '198.19.0.0/16', Backend: { Type: 'vxlan', DirectRouting: 'yes' } }, 'Backend.DirectRouting', /true or false/],
    [{ Network: '198.19.0.0/16', Backend: { Type: 'vxlan', GBP: 1 } }, 'Backend.GBP', /true or false/],
    [{ Network: '198.19.0.0/16', Backend: { Type: 'vxlan', MTU: 20 } }, 'Backend.MTU', /between/],
    [{ Network: '198.19.0.0/16', Backend: { Type: 'udp', Port: 0 } }, 'Backend.Port', /between/],
    [{ Network: '198.19.0.0/16', EnableIPv6: true }, 'IPv6Network', /required/],
    [{ Network: '198.19.0.0/16', EnableIPv4: false }, 'EnableIPv4', /IPv4 must be enabled/],
  ])('%j → %s', (json, field, reason) => expectConfigError(json, field as string, reason as RegExp));
});

describe("config keys are matched as upstream's Go decoder does", () => {
  it('reads lower-case and mixed-case keys, in the config and in Backend', () => {
    // Spellings from upstream's own tests and documentation.
    const c = parseNetworkConfig('{"network":"198.19.0.0/16","subnetlen":26,"backend":{"type":"vxlan","vni":7,"port":4789,"directrouting":true}}');
    expect(c.network.toString()).toBe('198.19.0.0/16');
    expect(c.subnetLen).toBe(26);
    expect(c.backend).toEqual({ type: 'vxlan', vni: 7, port: 4789, gbp: false, directRouting: true, mtu: null });
    expect(parseNetworkConfig('{"NETWORK":"198.19.0.0/16","Backend":{"TYPE":"udp","PORT":9000}}').backend).toEqual({ type: 'udp', port: 9000 });
  });

  it('lets a later spelling of the same key win, as Go does', () => {
    expect(parseNetworkConfig('{"Network":"198.18.0.0/16","network":"198.19.0.0/16"}').network.toString()).toBe('198.19.0.0/16');
  });

  it('names the field in upstream spelling when a lower-case key is invalid', () => {
    expectConfigError({ network: '198.19.0.0/16', subnetlen: 31 }, 'SubnetLen', /\/30 or shorter/);
    expectConfigError({ network: '198.19.0.0/16', backend: { type: 'vxlan', vni: 0 } }, 'Backend.VNI', /between/);
  });

  it('reports unknown keys (a typo) without refusing the config', () => {
    const { config, unknownKeys } = checkNetworkConfig('{"Network":"198.19.0.0/16","SubnetLenn":26,"Backend":{"Type":"vxlan","VNII":5,"Port":8472}}');
    expect(unknownKeys).toEqual(['SubnetLenn', 'Backend.VNII']);
    expect(config.subnetLen).toBe(24);
    // Keys upstream knows are not reported, even those this daemon ignores.
    expect(checkNetworkConfig('{"Network":"198.19.0.0/16","EnableIPv4":true,"Backend":{"Type":"vxlan","Learning":false}}').unknownKeys).toEqual([]);
    // A udp backend has no VNI: upstream's udp backend would ignore it, so it is reported.
    expect(checkNetworkConfig('{"Network":"198.19.0.0/16","Backend":{"Type":"udp","VNI":1}}').unknownKeys).toEqual(['Backend.VNI']);
  });

  it('formats the effective config in upstream keys, and that text parses back to the same config', () => {
    for (const text of [
      '{"network":"198.19.0.0/16","backend":{"type":"vxlan","mtu":1400}}',
      '{"Network":"198.19.0.0/20","SubnetLen":26,"SubnetMin":"198.19.1.0","Backend":{"Type":"vxlan","VNI":4,"GBP":true}}',
      '{"Network":"198.19.0.0/16"}',
    ]) {
      const c = parseNetworkConfig(text);
      const formatted = formatNetworkConfig(c);
      expect(Object.keys(formatted)).toEqual(['Network', 'SubnetLen', 'SubnetMin', 'SubnetMax', 'Backend']);
      const again = checkNetworkConfig(JSON.stringify(formatted));
      expect(again.unknownKeys).toEqual([]);
      expect(sameNetwork(again.config, c)).toBe(true);
    }
    expect(formatNetworkConfig(parseNetworkConfig('{"network":"198.19.0.0/16","backend":{"type":"vxlan"}}'))['Backend']).toEqual({
      Type: 'vxlan', VNI: 1, Port: 8472, GBP: false, DirectRouting: false,
    });
  });
});

describe('EnableNFTables', () => {
  it('chooses nftables for the netfilter rules; absent or false means iptables; any spelling of the key; a non-boolean names the field', () => {
    expect(parseNetworkConfig('{"Network":"198.19.0.0/16"}').enableNFTables).toBeUndefined();
    expect(parseNetworkConfig('{"Network":"198.19.0.0/16","EnableNFTables":false}').enableNFTables).toBeUndefined();
    expect(parseNetworkConfig('{"Network":"198.19.0.0/16","EnableNFTables":true}').enableNFTables).toBe(true);
    expect(parseNetworkConfig('{"network":"198.19.0.0/16","enablenftables":true}').enableNFTables).toBe(true);
    expectConfigError({ Network: '198.19.0.0/16', EnableNFTables: 'yes' }, 'EnableNFTables', /must be true or false/);
  });

  it('is kept by formatting (so `config validate` shows it) and a change of it is a change of the network (a restart applies it)', () => {
    const nft = parseNetworkConfig('{"Network":"198.19.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan"}}');
    expect(formatNetworkConfig(nft)['EnableNFTables']).toBe(true);
    expect(parseNetworkConfig(JSON.stringify(formatNetworkConfig(nft))).enableNFTables).toBe(true);
    expect(sameNetwork(nft, parseNetworkConfig('{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}'))).toBe(false);
  });
});
