// wireguard leases, as upstream writes and reads them. The expected bytes below are Go's: upstream's
// own LeaseAttrs type (v0.20.2's subnet.LeaseAttrs, the same as v0.28.9's lease.LeaseAttrs) marshalled
// by encoding/json with v0.28.9's wireguardLeaseAttrs {PublicKey string; Port uint16} as BackendData
// (and v0.20.2's, without Port), for PublicIP 198.18.0.1, PublicIPv6 2001:2::1, ports 51820/51821.
import { describe, expect, test } from 'vitest';
import { ownLeaseData } from '../src/backend/wireguard/peers.js';
import { parseWireguardBackend } from '../src/subnet/config.js';
import { LeaseRejected } from '../src/subnet/lease-reject.js';
import { type LeaseAttrs, decodeLeaseAttrs, encodeLeaseAttrs, sameLeaseAttrs } from '../src/subnet/lease.js';

const KEY = 'HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=';
const UPSTREAM_V4 = `{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"${KEY}","Port":51820}}`;
const UPSTREAM_DUAL = `{"PublicIP":"198.18.0.1","PublicIPv6":"2001:2::1","BackendType":"wireguard","BackendData":{"PublicKey":"${KEY}","Port":51820},"BackendV6Data":{"PublicKey":"${KEY}","Port":51821}}`;
/** v0.20.2 wrote the key only; the port then is the reader's own listen port. */
const UPSTREAM_V0_20 = `{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"${KEY}"}}`;

const V4: LeaseAttrs = { publicIP: '198.18.0.1', publicIPv6: null, backend: { type: 'wireguard', peer: { publicKey: KEY, port: 51820 }, peerV6: null } };
const DUAL: LeaseAttrs = {
  publicIP: '198.18.0.1',
  publicIPv6: '2001:2::1',
  backend: { type: 'wireguard', peer: { publicKey: KEY, port: 51820 }, peerV6: { publicKey: KEY, port: 51821 } },
};

function reason(value: string): string {
  try {
    decodeLeaseAttrs(value);
  } catch (err) {
    if (err instanceof LeaseRejected) return `${err.reason}: ${err.message}`;
    throw err;
  }
  return 'accepted';
}

const withData = (data: unknown, extra: Record<string, unknown> = {}): string =>
  JSON.stringify({ PublicIP: '198.18.0.1', PublicIPv6: null, BackendType: 'wireguard', BackendData: data, ...extra });

describe('the wire format, byte for byte against upstream', () => {
  test('an IPv4 lease: decoded, and encoded back to exactly upstream\'s bytes', () => {
    expect(decodeLeaseAttrs(UPSTREAM_V4)).toEqual(V4);
    expect(encodeLeaseAttrs(V4)).toBe(UPSTREAM_V4);
  });

  test('a dual-stack lease: BackendV6Data with the IPv6 device\'s port', () => {
    expect(decodeLeaseAttrs(UPSTREAM_DUAL)).toEqual(DUAL);
    expect(encodeLeaseAttrs(DUAL)).toBe(UPSTREAM_DUAL);
  });

  test("v0.20.2's lease (no Port): the port is null, and it is written back without one", () => {
    const attrs = decodeLeaseAttrs(UPSTREAM_V0_20);
    expect(attrs.backend).toEqual({ type: 'wireguard', peer: { publicKey: KEY, port: null }, peerV6: null });
    expect(encodeLeaseAttrs(attrs)).toBe(UPSTREAM_V0_20);
  });

  test('keys match case-insensitively, as Go decodes them; Port 0 reads as no port (upstream then uses its own)', () => {
    expect(decodeLeaseAttrs(withData({ publickey: KEY, PORT: 51820 })).backend).toEqual(V4.backend);
    expect(decodeLeaseAttrs(withData({ PublicKey: KEY, Port: 0 })).backend).toEqual({ type: 'wireguard', peer: { publicKey: KEY, port: null }, peerV6: null });
  });
});

describe('strict decoding', () => {
  test.each([
    ['no BackendData', JSON.stringify({ PublicIP: '198.18.0.1', BackendType: 'wireguard' }), /BackendData is missing/],
    ['BackendData an array', withData([KEY]), /BackendData is missing or not a JSON object/],
    ['no PublicKey', withData({ Port: 51820 }), /PublicKey is not a WireGuard public key: a key must be a string, got undefined/],
    ['PublicKey a number', withData({ PublicKey: 42 }), /a key must be a string, got number/],
    ['a key of 24 bytes', withData({ PublicKey: Buffer.alloc(24, 7).toString('base64') }), /44 characters of base64 \(32 bytes\), got 32 characters/],
    ['a key of 31 bytes (also 44 characters)', withData({ PublicKey: Buffer.alloc(31, 7).toString('base64') }), /standard base64 of 32 bytes/],
    ['a key of 33 bytes (also 44 characters)', withData({ PublicKey: Buffer.alloc(33, 7).toString('base64') }), /standard base64 of 32 bytes/],
    ['base64url, not base64', withData({ PublicKey: `${KEY.slice(0, 10)}-${KEY.slice(11)}` }), /standard base64/],
    ['padding bits set (a second spelling of one key)', withData({ PublicKey: KEY.replace('ykw=', 'ykx=') }), /standard base64/],
    ['a trailing newline', withData({ PublicKey: `${KEY.slice(0, 43)}\n` }), /control_chars|standard base64/],
    ['Port too large', withData({ PublicKey: KEY, Port: 65536 }), /Port 65536 is not a UDP port/],
    ['Port negative', withData({ PublicKey: KEY, Port: -1 }), /Port -1 is not a UDP port/],
    ['Port fractional', withData({ PublicKey: KEY, Port: 51820.5 }), /Port 51820.5 is not a UDP port/],
    ['Port a string', withData({ PublicKey: KEY, Port: '51820' }), /Port "51820" is not a UDP port/],
    ['a bad BackendV6Data', withData({ PublicKey: KEY, Port: 51820 }, { BackendV6Data: { PublicKey: 'x' } }), /BackendV6Data\.PublicKey "x" is not a WireGuard public key/],
  ])('%s: refused', (_what, value, why) => {
    const got = reason(value);
    expect(got).toMatch(/^(bad_backend_data|control_chars): /);
    expect(got).toMatch(why);
  });
});

test('sameLeaseAttrs tells a changed key or port apart', () => {
  expect(sameLeaseAttrs(V4, decodeLeaseAttrs(UPSTREAM_V4))).toBe(true);
  const other = 'A'.repeat(42) + 'E=';
  expect(sameLeaseAttrs(V4, { ...V4, backend: { type: 'wireguard', peer: { publicKey: other, port: 51820 }, peerV6: null } })).toBe(false);
  expect(sameLeaseAttrs(V4, { ...V4, backend: { type: 'wireguard', peer: { publicKey: KEY, port: 51822 }, peerV6: null } })).toBe(false);
  expect(sameLeaseAttrs(V4, DUAL)).toBe(false);
  expect(sameLeaseAttrs(DUAL, decodeLeaseAttrs(UPSTREAM_DUAL))).toBe(true);
});

describe('our own lease', () => {
  const own = (raw: Record<string, unknown>, ipv6: boolean, publicIPv6: string | null): string =>
    encodeLeaseAttrs({ publicIP: '198.18.0.1', publicIPv6, backend: ownLeaseData(parseWireguardBackend(raw, ipv6), KEY, ipv6) });

  test('upstream\'s bytes: IPv4, and dual stack in separate mode (each device\'s port)', () => {
    expect(own({}, false, null)).toBe(UPSTREAM_V4);
    expect(own({}, true, '2001:2::1')).toBe(UPSTREAM_DUAL);
  });

  test('a single-device mode names the one device\'s port in BackendV6Data too (upstream names ListenPortV6, where nothing listens)', () => {
    for (const Mode of ['auto', 'ipv4', 'ipv6']) {
      expect(own({ Mode }, true, '2001:2::1')).toBe(UPSTREAM_DUAL.replace('"Port":51821', '"Port":51820'));
    }
  });
});
