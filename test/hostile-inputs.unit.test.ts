// Our own inputs and what we print, without root or etcd: --public-ip / --iface checks,
// subnet.env values read back, printable() and the flannelctl lease table.
import { describe, expect, it } from 'vitest';
import { hasControlChars, printable, quoted, terminalSafeJson } from '../src/common/printable.js';
import { renderLeaseTable } from '../src/ctl/leases-table.js';
import { checkIfaceSelection, type IfaceSelection } from '../src/daemon/iface.js';
import type { LeaseRecord } from '../src/etcd/registry.js';
import { SubnetEnvError, parseSubnetEnv } from '../src/subnet/envfile.js';
import { Ip4Net } from '../src/common/ip4.js';
import { decodeLeaseAttrs } from '../src/subnet/lease.js';

const sel = (over: Partial<IfaceSelection>): IfaceSelection => ({ iface: [], ifaceRegex: [], ifaceCanReach: null, publicIP: null, ...over });

describe('printable()', () => {
  it.each([
    ['an ANSI clear-screen', 'a\u001b[2Jb', 'a\\x1b[2Jb'],
    ['a carriage return that would overwrite the row', 'ok\rEVIL', 'ok\\rEVIL'],
    ['newline and tab', 'a\nb\tc', 'a\\nb\\tc'],
    ['DEL and NUL', '\u007f\u0000', '\\x7f\\x00'],
    ['a C1 CSI', '\u009b2J', '\\x9b2J'],
    ['a bidi override', 'abc\u202edef', 'abc\\u202edef'],
    ['a zero-width space', 'a\u200bb', 'a\\u200bb'],
    ['a no-break space', '198.18.0.1\u00a0', '198.18.0.1\\xa0'],
    ['a line separator', 'a\u2028b', 'a\\u2028b'],
    ['a lone surrogate', 'a\ud800b', 'a\\ud800b'],
    ['an astral format character', 'a\u{e0001}b', 'a\\u{e0001}b'],
    ['plain text and spaces (unchanged)', 'Subnet 198.19.0.0/24 — ok', 'Subnet 198.19.0.0/24 — ok'],
    ['an emoji (a valid surrogate pair, unchanged)', 'a😀b', 'a😀b'],
  ])('escapes %s', (_what, input, shown) => {
    expect(printable(input)).toBe(shown);
    expect(printable(printable(input))).toBe(shown); // idempotent: escaping twice changes nothing
  });

  it('cuts long text and says how much was left out', () => {
    expect(printable('x'.repeat(1000), 10)).toBe('xxxxxxxxxx…(990 more)');
    expect(quoted('a b', 10)).toBe('"a b"');
  });

  it('hasControlChars: controls, format characters and separators, not ordinary spaces', () => {
    expect(hasControlChars('198.18.0.1')).toBe(false);
    expect(hasControlChars('198.18.0.1\u00a0')).toBe(false); // a space: refused by the address parser instead
    for (const c of ['\u0000', '\u001b', '\u007f', '\u0085', '\u200e', '\u2029', '\ufeff', '\udfff']) expect(hasControlChars(`a${c}`), JSON.stringify(c)).toBe(true);
  });

  it('terminalSafeJson keeps the JSON value and leaves nothing raw', () => {
    const value = { key: 'k\u202e\u009b\u2028\u{e0001}\u00a0', n: 1 };
    const json = terminalSafeJson(JSON.stringify(value, null, 2));
    expect(JSON.parse(json)).toEqual(value);
    expect(hasControlChars(json.replace(/\n/g, ''))).toBe(false);
    expect(json).toContain('\\u202e');
  });
});

describe('our own inputs get the lease parser', () => {
  it.each([
    ['--public-ip with a trailing space (FLANNELD_PUBLIC_IP="10.0.0.5 ")', { publicIP: '198.18.0.5 ' }, /--public-ip "198\.18\.0\.5 ": not an IPv4 address/],
    ['--public-ip with a no-break space', { publicIP: '198.18.0.5\u00a0' }, /--public-ip "198\.18\.0\.5\\xa0"/],
    ['--public-ip with a leading zero', { publicIP: '198.18.0.05' }, /--public-ip/],
    ['--public-ip multicast', { publicIP: '224.0.0.5' }, /multicast/],
    ['--public-ip 0.0.0.0', { publicIP: '0.0.0.0' }, /this network/],
    ['--iface with a padded address', { iface: ['198.18.0.1\u00a0'] }, /--iface "198\.18\.0\.1\\xa0" is neither/],
    ['--iface with a space inside', { iface: ['eth 0'] }, /--iface "eth 0" is neither/],
    ['--iface too long for a name', { iface: ['a'.repeat(16)] }, /is neither/],
    ['--iface with a slash', { iface: ['a/b'] }, /is neither/],
    ['--iface with an escape', { iface: ['eth0\u001b[2J'] }, /--iface "eth0\\x1b\[2J"/],
    ['--iface-can-reach padded', { ifaceCanReach: ' 198.18.0.254' }, /--iface-can-reach " 198\.18\.0\.254" is not an IP address/],
  ] as [string, Partial<IfaceSelection>, RegExp][])('refuses %s', (_what, over, message) => {
    expect(() => checkIfaceSelection(sel(over))).toThrow(message);
  });

  it('accepts canonical addresses and interface names', () => {
    expect(() => checkIfaceSelection(sel({ publicIP: '198.18.0.5', iface: ['eth0', '198.18.0.1', 'br-1.100', 'veth@x'], ifaceCanReach: '198.18.0.254' }))).not.toThrow();
  });

  const env = (subnet: string): string => `FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_SUBNET=${subnet}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n`;

  it('subnet.env values read back are parsed exactly; blanks a shell drops are dropped', () => {
    expect(parseSubnetEnv(env('198.19.46.1/24'), 'f').subnet.toString()).toBe('198.19.46.0/24');
    expect(parseSubnetEnv(env('198.19.46.1/24  \r'), 'f').subnet.toString()).toBe('198.19.46.0/24');
    expect(parseSubnetEnv(env('"198.19.46.1/24"'), 'f').subnet.toString()).toBe('198.19.46.0/24');
  });

  it.each([['198.19.46.1/24\u00a0'], ['\u3000198.19.46.1/24'], ['198.19.046.1/24'], ['198.19.46.1 /24'], ['198.19.46.1/024']])('refuses FLANNEL_SUBNET=%j with the value escaped', (value) => {
    expect(() => parseSubnetEnv(env(value), 'f')).toThrow(SubnetEnvError);
    expect(() => parseSubnetEnv(env(value), 'f')).toThrow(/FLANNEL_SUBNET=".*" is not an IPv4 address\/prefix/);
    try {
      parseSubnetEnv(env(value), 'f');
    } catch (err) {
      expect(hasControlChars((err as Error).message)).toBe(false);
      expect((err as Error).message).not.toMatch(/[\u00a0\u3000]/);
    }
  });
});

describe('flannelctl leases table', () => {
  const record = (key: string, value: string): LeaseRecord => ({
    key: `/coreos.com/network/subnets/${key}`, subnet: Ip4Net.fromKey(key), attrs: decodeLeaseAttrs(value), leaseId: null, modRevision: '1', createRevision: '1',
  });

  it('shows invalid leases with control characters escaped; no raw escape reaches the terminal', () => {
    const rows = [{ record: record('198.19.5.0-24', '{"PublicIP":"198.18.0.2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"f6:bd:17:d2:cf:1b"}}'), ttlSeconds: null }];
    const invalid = [
      { key: '/coreos.com/network/subnets/\u001b[2J\u001b[1;1Hjunk', reason: 'subnet key "\\x1b[2J\\x1b[1;1Hjunk" contains control characters', code: 'control_chars', subnet: null, modRevision: '1' },
      { key: '/coreos.com/network/subnets/ok\rEVIL-ROW', reason: 'raw \u001b[31mred\u001b[0m reason', code: 'bad_key', subnet: null, modRevision: '1' },
      { key: `/coreos.com/network/subnets/${'x'.repeat(5000)}`, reason: 'not a subnet key', code: 'bad_key', subnet: null, modRevision: '1' },
      { key: '/coreos.com/network/subnets/198.19.6.0-24', reason: 'VtepMAC "\\x1b[2J" …', code: 'bad_vtep_mac', subnet: Ip4Net.parse('198.19.6.0/24'), modRevision: '1' },
    ];
    const out = renderLeaseTable(rows, invalid);
    expect(out.replace(/\n/g, '')).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/);
    expect(out).toContain('\\x1b[2J\\x1b[1;1Hjunk');
    expect(out).toContain('ok\\rEVIL-ROW');
    expect(out).toContain('raw \\x1b[31mred\\x1b[0m reason');
    expect(out).toContain('198.19.6.0/24');
    expect(out).toContain('f6:bd:17:d2:cf:1b');
    expect(out.split('\n').length).toBe(1 + rows.length + invalid.length + 1); // one line per row, nothing injected
    expect(Math.max(...out.split('\n').map((l) => l.length))).toBeLessThan(600); // junk keys are cut
  });
});
