// What the wg(8) client writes and reads, without a device: the peer configuration text (every value
// checked, so that none can add a line of its own), `wg show dump` parsing (the private key dropped),
// and which `ip link add` failures mean "no kernel WireGuard here".
import { createHash } from 'node:crypto';
import { describe, expect, test } from 'vitest';
import { kernelLacksWireguard } from '../src/backend/wireguard/device.js';
import { type WgPeerConfig, formatEndpoint, parseDump, peersConfigText } from '../src/routes/wg.js';

const KEY = 'HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=';
const PSK = 'FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=';
const peer = (p: Partial<WgPeerConfig> = {}): WgPeerConfig => ({
  publicKey: KEY, allowedIPs: ['198.19.12.0/24'], endpoint: { ip: '198.18.0.2', port: 51820 }, presharedKey: null, persistentKeepalive: 0, ...p,
});

describe('peersConfigText', () => {
  test('one [Peer] section per peer; no PSK is written as the zero key, keepalive 0 as off', () => {
    expect(peersConfigText([peer(), peer({ presharedKey: PSK, persistentKeepalive: 25, endpoint: { ip: '2001:2:0:0::2', port: 51821 }, allowedIPs: ['2001:2:1:7::/64'] })])).toBe(
      [
        '[Peer]', `PublicKey = ${KEY}`, `PresharedKey = ${'A'.repeat(43)}=`, 'AllowedIPs = 198.19.12.0/24', 'PersistentKeepalive = off', 'Endpoint = 198.18.0.2:51820',
        '[Peer]', `PublicKey = ${KEY}`, `PresharedKey = ${PSK}`, 'AllowedIPs = 2001:2:1:7::/64', 'PersistentKeepalive = 25', 'Endpoint = [2001:2::2]:51821',
      ].join('\n') + '\n',
    );
    // No endpoint: the device keeps the one it has (a roaming peer).
    expect(peersConfigText([peer({ endpoint: null })])).not.toContain('Endpoint');
  });

  test.each([
    ['a public key with a line break', peer({ publicKey: `${KEY.slice(0, 43)}\n` }), /public key/],
    ['a PSK that is not a key', peer({ presharedKey: 'secret' }), /preshared key/],
    ['an allowed IP with another line', peer({ allowedIPs: ['198.19.12.0/24\nEndpoint = 203.0.113.1:1'] }), /allowed IP/],
    ['an allowed IP with host bits', peer({ allowedIPs: ['198.19.12.1/24'] }), /host bits/],
    ['an endpoint that is a name', peer({ endpoint: { ip: 'evil.example', port: 1 } }), /not an IP address/],
    ['an endpoint port of 0', peer({ endpoint: { ip: '198.18.0.2', port: 0 } }), /endpoint port must be 1-65535/],
    ['a keepalive beyond 16 bits', peer({ persistentKeepalive: 65536 }), /persistent keepalive/],
  ])('%s: refused before anything is written', (_what, p, why) => {
    expect(() => peersConfigText([p])).toThrow(why);
  });

  test('endpoints are written canonically', () => {
    expect(formatEndpoint({ ip: '2001:0002::0002', port: 1 })).toBe('[2001:2::2]:1');
  });
});

describe('parseDump', () => {
  // `wg show flannel-wg dump` from wireguard-go (a private key made for this test).
  const dump = [
    ['kMlEYa8Tas7aomBi8lk0nS2sieYDuL3+IJnmruIk3nI=', 'phf0AHPqvDJ3wRTbGPI/1tB2HXpMd68LU1V2stsdD1Y=', '51820', 'off'].join('\t'),
    [KEY, PSK, '198.18.0.2:51820', '198.19.12.0/24,198.19.13.0/24', '1796184002', '1234', '5678', '25'].join('\t'),
    ['GtpimdrwKRrP33aiLLA0QiFVuf/TS3GmJ87bBWw7vH8=', '(none)', '(none)', '(none)', '0', '0', '0', 'off'].join('\t'),
  ].join('\n') + '\n';

  // The PSK's fingerprint: the first 16 hex digits of the SHA-256 of its 32 bytes.
  const PSK_ID = createHash('sha256').update(Buffer.from(PSK, 'base64')).digest('hex').slice(0, 16);

  test('the device and each peer; the private key and the PSK are not kept, only the PSK\'s fingerprint', () => {
    const state = parseDump(dump);
    expect(state).toEqual({
      publicKey: 'phf0AHPqvDJ3wRTbGPI/1tB2HXpMd68LU1V2stsdD1Y=',
      listenPort: 51820,
      peers: [
        { publicKey: KEY, hasPresharedKey: true, presharedKeyId: PSK_ID, endpoint: '198.18.0.2:51820', allowedIPs: ['198.19.12.0/24', '198.19.13.0/24'], latestHandshake: new Date(1796184002_000), rxBytes: 1234, txBytes: 5678, persistentKeepalive: 25 },
        { publicKey: 'GtpimdrwKRrP33aiLLA0QiFVuf/TS3GmJ87bBWw7vH8=', hasPresharedKey: false, presharedKeyId: null, endpoint: null, allowedIPs: [], latestHandshake: null, rxBytes: 0, txBytes: 0, persistentKeepalive: 0 },
      ],
    });
    expect(JSON.stringify(state)).not.toContain('kMlEYa8Tas7aomBi8lk0nS2sieYDuL3');
    expect(JSON.stringify(state)).not.toContain(PSK);
  });

  test('a device without a key yet (as wireguard-go starts)', () => {
    expect(parseDump('(none)\t(none)\t0\toff\n')).toEqual({ publicKey: null, listenPort: 0, peers: [] });
  });

  test('truncated output is an error that shows none of it', () => {
    expect(() => parseDump('')).toThrow(/no device line/);
    expect(() => parseDump(`${dump}${KEY}\t(none)\n`)).toThrow(/^wg show dump: a peer line has 2 fields, not 8$/);
  });
});

test('which `ip link add ... type wireguard` failures mean the kernel has no WireGuard', () => {
  expect(kernelLacksWireguard('Error: Unknown device type.\n')).toBe(true);
  expect(kernelLacksWireguard('RTNETLINK answers: Operation not supported\n')).toBe(true);
  expect(kernelLacksWireguard('RTNETLINK answers: Operation not permitted\n')).toBe(false);
  expect(kernelLacksWireguard('RTNETLINK answers: File exists\n')).toBe(false);
});
