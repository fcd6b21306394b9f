// Strict lease parsing, case by case: no root, no etcd. Each refused case names the
// reason the lease manager counts; each accepted one shows the canonical form that is stored.
import { describe, expect, it } from 'vitest';
import { parseNetworkConfig } from '../src/subnet/config.js';
import { Ip4Net, formatIp4, parseIp4, parseUnicastIp4 } from '../src/common/ip4.js';
import { decodeLeaseAttrs, encodeLeaseAttrs } from '../src/subnet/lease.js';
import { parseIp4SubnetKey } from '../src/subnet/lease-store.js';
import {
  LEASE_REJECT_REASONS, LeaseRejected, MAX_LEASE_VALUE_BYTES, type LeaseRejectReason, checkLeaseSubnet, formatIp6, goFoldKey, parseIp6,
  parseUnicastIp6, parseVtepMac, rejectionOf,
} from '../src/subnet/lease-validation.js';

/** The reason a decoder refused `fn`'s input with, or 'accepted'. */
function reasonOf(fn: () => unknown): LeaseRejectReason | 'accepted' | 'other error' {
  try {
    fn();
    return 'accepted';
  } catch (err) {
    return err instanceof LeaseRejected ? err.reason : 'other error';
  }
}

const vxlan = (over: Record<string, unknown> = {}, data: Record<string, unknown> = {}): string =>
  JSON.stringify({ PublicIP: '198.18.0.2', PublicIPv6: null, BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: 'f6:bd:17:d2:cf:1b', ...data }, ...over });

describe('IPv4 addresses are parsed exactly (as Go net.ParseIP reads a dotted quad)', () => {
  it.each(['0.0.0.0', '198.18.0.2', '255.255.255.255', '1.2.3.4', '10.0.0.5', '100.64.200.9'])('accepts %s, which is its own canonical form', (text) => {
    expect(formatIp4(parseIp4(text))).toBe(text);
  });

  it.each([
    ['trailing space', '198.18.0.77 '],
    ['leading space', ' 198.18.0.77'],
    ['trailing newline', '198.18.0.78\n'],
    ['trailing tab', '198.18.0.78\t'],
    ['trailing no-break space', '198.18.0.79\u00a0'],
    ['ideographic space', '\u3000198.18.0.79'],
    ['em space inside', '198.18.\u20030.79'],
    ['zero-width space', '198.18.0.7\u200b9'],
    ['leading zero', '198.18.0.077'],
    ['leading zero in first octet', '010.0.0.1'],
    ['double zero', '198.18.00.1'],
    ['octet over 255', '198.18.0.256'],
    ['four-digit octet', '198.18.0.1000'],
    ['three octets', '198.18.0'],
    ['five octets', '198.18.0.1.2'],
    ['empty octet', '198..0.1'],
    ['trailing dot', '198.18.0.1.'],
    ['sign', '198.18.0.+1'],
    ['hex', '0xc6.18.0.1'],
    ['Arabic-Indic digits', '١٩٨.18.0.1'],
    ['fullwidth digits', '１98.18.0.1'],
    ['IPv4-mapped IPv6', '::ffff:198.18.0.1'],
    ['integer form', '3323068417'],
    ['CIDR', '198.18.0.1/24'],
    ['empty', ''],
    ['NUL', '198.18.0.1\u0000'],
  ])('refuses %s', (_what, text) => {
    expect(() => parseIp4(text)).toThrow(/not an IPv4 address/);
  });

  it('error messages escape what they quote', () => {
    expect(() => parseIp4('198.18.0.1\u001b[2J')).toThrow('not an IPv4 address: "198.18.0.1\\x1b[2J"');
    expect(() => parseIp4('198.18.0.79\u00a0')).toThrow('"198.18.0.79\\xa0"');
  });

  it.each([
    ['0.1.2.3', /this network/],
    ['127.0.0.1', /loopback/],
    ['224.0.0.1', /multicast/],
    ['239.255.255.250', /multicast/],
    ['240.0.0.1', /reserved/],
    ['255.255.255.255', /broadcast/],
  ])('a node address must be unicast: refuses %s', (text, why) => {
    expect(() => parseUnicastIp4(text)).toThrow(why);
  });
});

describe('CIDRs and subnet keys are exact', () => {
  it('parses canonical forms', () => {
    expect(Ip4Net.parse('198.19.0.0/16').toString()).toBe('198.19.0.0/16');
    expect(Ip4Net.parse('0.0.0.0/0').toString()).toBe('0.0.0.0/0');
    expect(Ip4Net.parse('198.19.46.1/24', true).toString()).toBe('198.19.46.0/24');
    expect(Ip4Net.fromKey('198.19.22.0-24').toString()).toBe('198.19.22.0/24');
    expect(Ip4Net.fromKey('198.19.22.128-25').toKey()).toBe('198.19.22.128-25');
  });

  it.each([' 198.19.0.0/16', '198.19.0.0/16 ', '198.19.0.0/16\n', '198.19.0.0 /16', '198.19.0.0/ 16', '198.19.0.0/016', '198.19.0.0/33', '198.19.0.0/-1', '198.19.0.0/+16', '198.19.0.0/16/16', '198.19.0.0', '/16', '198.19.0.0/１6'])(
    'refuses the CIDR %j',
    (text) => {
      expect(() => Ip4Net.parse(text, true)).toThrow(/not an IPv4 CIDR/);
    },
  );

  it.each([
    ['198.19.22.0/24', 'bad_key'],
    ['198.19.22.5-24', 'bad_key'], // host bits
    ['198.19.22.0-024', 'bad_key'],
    ['198.19.022.0-24', 'bad_key'],
    ['198.19.22.0-24 ', 'bad_key'],
    ['198.19.22.0-24\u00a0', 'bad_key'],
    ['198.19.22.0-33', 'bad_key'],
    ['198.19.22.0-24-24', 'bad_key'],
    ['198.19.22.0-24&2001:2:1:1e::-64', 'bad_key'], // dual-stack keys: IPv6 networks are not run here
    ['junk', 'bad_key'],
    ['', 'bad_key'],
    ['x'.repeat(100_000), 'bad_key'],
    ['198.19.22.0-24\n', 'control_chars'],
    ['198.19.22.0-24\u001b[2J', 'control_chars'],
    ['\u202e42-0.22.91.891', 'control_chars'],
  ] as const)('refuses the key %j as %s', (key, reason) => {
    expect(reasonOf(() => parseIp4SubnetKey(key))).toBe(reason);
  });

  it("a refused key's message is bounded and escaped", () => {
    const err = (() => {
      try {
        parseIp4SubnetKey(`\u001b[2J${'x'.repeat(10_000)}`);
      } catch (e) {
        return e as Error;
      }
      throw new Error('accepted');
    })();
    expect(err.message.length).toBeLessThan(200);
    expect(err.message).not.toMatch(/[\u0000-\u001f]/);
  });
});

describe('lease values: each refusal has its reason', () => {
  it.each([
    // JSON shape
    ['not JSON', 'garbage', 'bad_json'],
    ['an array', '[]', 'bad_json'],
    ['a string', '"198.18.0.2"', 'bad_json'],
    ['null', 'null', 'bad_json'],
    ['keys that differ only in case', '{"PublicIP":"198.18.0.2","publicip":"198.18.0.3"}', 'bad_json'],
    // PublicIP
    ['no PublicIP', '{"PublicIPv6":null}', 'bad_public_ip'],
    ['PublicIP null', '{"PublicIP":null}', 'bad_public_ip'],
    ['PublicIP a number', '{"PublicIP":3323068418}', 'bad_public_ip'],
    ['PublicIP with a trailing space', '{"PublicIP":"198.18.0.77 "}', 'bad_public_ip'],
    ['PublicIP with a trailing no-break space', '{"PublicIP":"198.18.0.79\u00a0"}', 'bad_public_ip'],
    ['PublicIP with a leading zero', '{"PublicIP":"198.18.0.02"}', 'bad_public_ip'],
    ['PublicIP octet over 255', '{"PublicIP":"198.18.0.300"}', 'bad_public_ip'],
    ['PublicIP multicast', '{"PublicIP":"224.0.0.1"}', 'bad_public_ip'],
    ['PublicIP broadcast', '{"PublicIP":"255.255.255.255"}', 'bad_public_ip'],
    ['PublicIP 0.0.0.0', '{"PublicIP":"0.0.0.0"}', 'bad_public_ip'],
    ['PublicIP loopback', '{"PublicIP":"127.0.0.1"}', 'bad_public_ip'],
    ['PublicIP in IPv6 form', '{"PublicIP":"::ffff:198.18.0.2"}', 'bad_public_ip'],
    // PublicIPv6
    ['PublicIPv6 a number', '{"PublicIP":"198.18.0.2","PublicIPv6":5}', 'bad_public_ipv6'],
    ['PublicIPv6 garbage', '{"PublicIP":"198.18.0.2","PublicIPv6":"2001:2::g"}', 'bad_public_ipv6'],
    ['PublicIPv6 padded', '{"PublicIP":"198.18.0.2","PublicIPv6":"2001:2::1 "}', 'bad_public_ipv6'],
    ['PublicIPv6 with a zone', '{"PublicIP":"198.18.0.2","PublicIPv6":"fe80::1%eth0"}', 'bad_public_ipv6'],
    ['PublicIPv6 multicast', '{"PublicIP":"198.18.0.2","PublicIPv6":"ff02::1"}', 'bad_public_ipv6'],
    ['PublicIPv6 unspecified', '{"PublicIP":"198.18.0.2","PublicIPv6":"::"}', 'bad_public_ipv6'],
    ['PublicIPv6 an IPv4 address', '{"PublicIP":"198.18.0.2","PublicIPv6":"198.18.0.2"}', 'bad_public_ipv6'],
    // BackendType
    ['an unknown BackendType', '{"PublicIP":"198.18.0.2","BackendType":"ipsec"}', 'bad_backend_type'],
    ['BackendType in other case (Go compares exactly)', '{"PublicIP":"198.18.0.2","BackendType":"VXLAN"}', 'bad_backend_type'],
    ['BackendType a number', '{"PublicIP":"198.18.0.2","BackendType":1}', 'bad_backend_type'],
    ['BackendType padded', '{"PublicIP":"198.18.0.2","BackendType":"vxlan "}', 'bad_backend_type'],
    // BackendData
    ['BackendData a string', '{"PublicIP":"198.18.0.2","BackendType":"vxlan","BackendData":"x"}', 'bad_backend_data'],
    ['vxlan without BackendData', '{"PublicIP":"198.18.0.2","BackendType":"vxlan"}', 'bad_backend_data'],
    ['udp with BackendData an array', '{"PublicIP":"198.18.0.2","BackendData":[1]}', 'bad_backend_data'],
    ['VNI too large', vxlan({}, { VNI: 0x1000000 }), 'bad_backend_data'],
    ['VNI fractional', vxlan({}, { VNI: 1.5 }), 'bad_backend_data'],
    ['VNI a string', vxlan({}, { VNI: '1' }), 'bad_backend_data'],
    // VtepMAC
    ['no VtepMAC', vxlan({ BackendData: { VNI: 1 } }), 'bad_vtep_mac'],
    ['VtepMAC a number', vxlan({}, { VtepMAC: 5 }), 'bad_vtep_mac'],
    ['a multicast VtepMAC', vxlan({}, { VtepMAC: '01:00:5e:00:00:01' }), 'bad_vtep_mac'],
    ['the broadcast VtepMAC', vxlan({}, { VtepMAC: 'ff:ff:ff:ff:ff:ff' }), 'bad_vtep_mac'],
    ['a zero VtepMAC', vxlan({}, { VtepMAC: '00:00:00:00:00:00' }), 'bad_vtep_mac'],
    ['a short VtepMAC', vxlan({}, { VtepMAC: 'f6:bd:17:d2:cf' }), 'bad_vtep_mac'],
    ['a padded VtepMAC', vxlan({}, { VtepMAC: 'f6:bd:17:d2:cf:1b ' }), 'bad_vtep_mac'],
    ['a VtepMAC with mixed separators', vxlan({}, { VtepMAC: 'f6:bd-17:d2:cf:1b' }), 'bad_vtep_mac'],
    ['an EUI-64 VtepMAC', vxlan({}, { VtepMAC: 'f6:bd:17:d2:cf:1b:00:01' }), 'bad_vtep_mac'],
    ['a VtepMAC with a word in it', vxlan({}, { VtepMAC: 'f6:bd:17:d2:cf:1b dev lo' }), 'bad_vtep_mac'],
    // control characters, anywhere
    ['an escape in VtepMAC', vxlan({}, { VtepMAC: '\u001b[2Jf6:bd:17:d2:cf:1b' }), 'control_chars'],
    ['a newline in PublicIP', '{"PublicIP":"198.18.0.78\\n"}', 'control_chars'],
    ['a bidi override in an unknown field', '{"PublicIP":"198.18.0.2","Note":"\u202eevil"}', 'control_chars'],
    ['a control character in a key', '{"PublicIP":"198.18.0.2","\\u0007":1}', 'control_chars'],
    ['a raw control character (not JSON)', '{"PublicIP":"198.18.0.2\u0007"}', 'control_chars'],
    ['a C1 control', '{"PublicIP":"198.18.0.2","x":"\u009b2J"}', 'control_chars'],
    ['a line separator', '{"PublicIP":"198.18.0.2","x":"a\u2028b"}', 'control_chars'],
    ['a lone surrogate', '{"PublicIP":"198.18.0.2","x":"\\ud800"}', 'control_chars'],
    // size
    ['a value over the limit', JSON.stringify({ PublicIP: '198.18.0.2', Pad: 'x'.repeat(MAX_LEASE_VALUE_BYTES) }), 'too_large'],
    ['a huge value', 'x'.repeat(2_000_000), 'too_large'],
    ['a value over the limit in bytes but not in characters', JSON.stringify({ PublicIP: '198.18.0.2', Pad: 'é'.repeat(2100) }), 'too_large'],
  ] as const)('refuses %s', (_what, value, reason) => {
    expect(reasonOf(() => decodeLeaseAttrs(value))).toBe(reason);
  });

  it('every reason the decoders use is a snake_case label value', () => {
    for (const r of LEASE_REJECT_REASONS) expect(r).toMatch(/^[a-z]+(_[a-z0-9]+)*$/);
  });

  it('messages name the field and show the bad text escaped', () => {
    expect(() => decodeLeaseAttrs('{"PublicIP":"198.18.0.77 "}')).toThrow('lease PublicIP: not an IPv4 address: "198.18.0.77 "');
    expect(() => decodeLeaseAttrs(vxlan({}, { VtepMAC: '01:00:5e:00:00:01' }))).toThrow(/VtepMAC 01:00:5e:00:00:01 is a multicast address/);
    expect(rejectionOf(new Error('boom'))).toEqual({ reason: 'bad_json', detail: 'boom' });
  });
});

describe('lease values: what is accepted, and in which form it is stored', () => {
  it('a value just under the size limit is accepted', () => {
    const base = JSON.stringify({ PublicIP: '198.18.0.2', Pad: '' });
    const value = JSON.stringify({ PublicIP: '198.18.0.2', Pad: 'x'.repeat(MAX_LEASE_VALUE_BYTES - base.length) });
    expect(value.length).toBe(MAX_LEASE_VALUE_BYTES);
    expect(decodeLeaseAttrs(value).publicIP).toBe('198.18.0.2');
  });

  it('keys match case-insensitively, as Go encoding/json does (upstream reads them so)', () => {
    const attrs = decodeLeaseAttrs('{"publicip":"198.18.0.2","PUBLICIPV6":null,"backendtype":"vxlan","backenddata":{"vni":1,"vtepmac":"F6:BD:17:D2:CF:1B"}}');
    expect(attrs).toEqual({ publicIP: '198.18.0.2', publicIPv6: null, backend: { type: 'vxlan', vtep: { vni: 1, mac: 'f6:bd:17:d2:cf:1b' }, vtepV6: null } });
    // Written back in upstream's exact spelling.
    expect(encodeLeaseAttrs(attrs)).toBe('{"PublicIP":"198.18.0.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"f6:bd:17:d2:cf:1b"}}');
    // Go folds KELVIN SIGN to K: "Bac\u212aendType" is BackendType to upstream, so to us.
    expect(decodeLeaseAttrs('{"PublicIP":"198.18.0.2","Bac\u212aendType":"vxlan","BackendData":{"VtepMAC":"f6:bd:17:d2:cf:1b"}}').backend.type).toBe('vxlan');
    expect(goFoldKey('vtepMac')).toBe(goFoldKey('VTEPMAC'));
    expect(goFoldKey('publicıp')).not.toBe(goFoldKey('PublicIP')); // dotless i does not fold to I in Go
  });

  it('unknown keys are ignored, as Go does; BackendType absent, null or "" is udp', () => {
    expect(decodeLeaseAttrs('{"PublicIP":"198.18.0.2","PublicIPv6":null,"Extra":{"a":[1,2]},"BackendV6Data":null}').backend.type).toBe('udp');
    expect(decodeLeaseAttrs('{"PublicIP":"198.18.0.2","BackendType":null}').backend.type).toBe('udp');
    expect(decodeLeaseAttrs('{"PublicIP":"198.18.0.2","BackendType":""}').backend.type).toBe('udp');
  });

  it('JSON whitespace between tokens is fine (a hand-written reservation)', () => {
    expect(decodeLeaseAttrs('{\n  "PublicIP": "198.18.0.2"\n}\n').publicIP).toBe('198.18.0.2');
  });

  it('VtepMAC in any form Go reads is stored lower-case with colons; VNI is optional', () => {
    for (const mac of ['F6:BD:17:D2:CF:1B', 'f6-bd-17-d2-cf-1b', 'f6bd.17d2.cf1b']) {
      expect(decodeLeaseAttrs(vxlan({ BackendData: { VtepMAC: mac } })).backend).toEqual({ type: 'vxlan', vtep: { vni: null, mac: 'f6:bd:17:d2:cf:1b' }, vtepV6: null });
    }
    expect(parseVtepMac('02:00:00:00:00:01')).toBe('02:00:00:00:00:01'); // locally administered unicast is fine
  });

  it('PublicIPv6 is stored in canonical (RFC 5952) form', () => {
    expect(decodeLeaseAttrs('{"PublicIP":"198.18.0.2","PublicIPv6":"2001:0002:0000:0000:0000:0000:0000:0001"}').publicIPv6).toBe('2001:2::1');
    expect(decodeLeaseAttrs('{"PublicIP":"198.18.0.2","PublicIPv6":"2001:2::ABCD"}').publicIPv6).toBe('2001:2::abcd');
  });
});

describe('IPv6 parsing', () => {
  it.each([
    ['2001:2::1', '2001:2::1'],
    ['2001:2:0:0:0:0:0:1', '2001:2::1'],
    ['2001:0:0:1:0:0:0:1', '2001:0:0:1::1'], // the longer run is compressed
    ['2001:2:0:0:1:0:0:1', '2001:2::1:0:0:1'], // ties: the first
    ['2001:2:1:1:1:1:0:1', '2001:2:1:1:1:1:0:1'], // a single zero group stays
    ['1::', '1::'],
    ['::2', '::2'],
    ['64:ff9b::198.18.0.1', '64:ff9b::c612:1'],
    ['1:2:3:4:5:6:7::', '1:2:3:4:5:6:7:0'],
  ])('%s → %s', (text, canonical) => {
    expect(formatIp6(parseIp6(text))).toBe(canonical);
  });

  it.each([':', ':::', '1:2:3:4:5:6:7:8:9', '1::2::3', '12345::1', '1:2:3:4:5:6:7', ' ::1', '::1 ', 'fe80::1%eth0', '::198.18.0.01', '1.2.3.4::', 'g::1', '::１'])(
    'refuses %j',
    (text) => {
      expect(() => parseIp6(text)).toThrow(/not an IPv6 address/);
    },
  );

  it('a node address must be unicast', () => {
    expect(() => parseUnicastIp6('::1')).toThrow(/loopback/);
    expect(() => parseUnicastIp6('::ffff:198.18.0.1')).toThrow(/IPv4-mapped/);
    expect(parseUnicastIp6('2001:2::1')).toBe('2001:2::1');
  });
});

describe('the network-dependent check (called by the lease manager)', () => {
  const config = parseNetworkConfig(JSON.stringify({ Network: '198.19.0.0/16', Backend: { Type: 'vxlan' } }));

  it.each([
    ['198.19.5.0-24', null],
    ['198.19.0.0-24', null], // the first subnet: not handed out by default, but a reservation may hold it
    ['198.19.255.0-24', null],
    ['198.19.5.0-25', 'wrong_prefix_len'],
    ['198.19.4.0-23', 'wrong_prefix_len'],
    ['198.19.0.0-16', 'wrong_prefix_len'],
    ['198.20.5.0-24', 'outside_network'],
    ['198.18.0.0-24', 'outside_network'],
  ] as const)('%s → %s', (key, reason) => {
    const problem = checkLeaseSubnet(Ip4Net.fromKey(key), config);
    expect(problem?.reason ?? null).toBe(reason);
    if (problem) expect(problem.detail).toContain(Ip4Net.fromKey(key).toString());
  });

  it('uses the configured SubnetLen', () => {
    const c26 = parseNetworkConfig(JSON.stringify({ Network: '198.19.0.0/16', SubnetLen: 26 }));
    expect(checkLeaseSubnet(Ip4Net.fromKey('198.19.5.64-26'), c26)).toBeNull();
    expect(checkLeaseSubnet(Ip4Net.fromKey('198.19.5.0-24'), c26)?.reason).toBe('wrong_prefix_len');
  });
});
