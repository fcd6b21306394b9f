// The wireguard backend's network config keys, with upstream v0.28.9's defaults (RegisterNetwork:
// ListenPort 51820, ListenPortV6 51821, MTU = the underlay's, no PSK, keepalive 0, Mode separate) and
// an error naming the field for each bad value; a config naming it is a network config like any other,
// and `flannelctl config validate` prints it back in upstream's keys.
import { describe, expect, test } from 'vitest';
import { ConfigError, checkNetworkConfig, formatNetworkConfig, parseNetworkConfig, parseWireguardBackend } from '../src/subnet/config.js';

const PSK = 'FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE=';

function refusal(fn: () => unknown): { field: string; reason: string } {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return { field: err.field, reason: err.reason };
    throw err;
  }
  throw new Error('accepted');
}

describe('parseWireguardBackend', () => {
  test("upstream's defaults", () => {
    expect(parseWireguardBackend({ Type: 'wireguard' }, false)).toEqual({
      type: 'wireguard', listenPort: 51820, listenPortV6: 51821, mtu: null, psk: null, persistentKeepaliveInterval: 0, mode: 'separate',
    });
  });

  test('every key given', () => {
    expect(
      parseWireguardBackend({ Type: 'wireguard', PSK, ListenPort: 40000, ListenPortV6: 40001, MTU: 1450, PersistentKeepaliveInterval: 25, Mode: 'auto' }, true),
    ).toEqual({ type: 'wireguard', listenPort: 40000, listenPortV6: 40001, mtu: 1450, psk: PSK, persistentKeepaliveInterval: 25, mode: 'auto' });
    // As upstream: an empty PSK is none.
    expect(parseWireguardBackend({ PSK: '' }, false).psk).toBeNull();
  });

  test.each([
    [{ Mode: 'Auto' }, false, 'Backend.Mode', /must be one of separate, auto, ipv4, ipv6 \(as upstream spells them\), got "Auto"/],
    [{ Mode: 'ipv6' }, false, 'Backend.Mode', /needs EnableIPv6/],
    [{ PSK: 'secret' }, false, 'Backend.PSK', /not a WireGuard key \(make one with `wg genpsk`\): a key is 44 characters/],
    [{ PSK: 42 }, false, 'Backend.PSK', /a key must be a string, got number/],
    [{ ListenPort: 0 }, false, 'Backend.ListenPort', /between 1 and 65535, got 0/],
    [{ ListenPort: 70000 }, false, 'Backend.ListenPort', /between 1 and 65535/],
    [{ ListenPortV6: '51821' }, true, 'Backend.ListenPortV6', /must be an integer/],
    [{ ListenPort: 5000, ListenPortV6: 5000 }, true, 'Backend.ListenPortV6', /must differ from ListenPort \(5000\)/],
    [{ MTU: 100 }, false, 'Backend.MTU', /between 148 and 65535, got 100/],
    [{ MTU: 1300 }, true, 'Backend.MTU', /between 1360 and 65535, got 1300/],
    [{ PersistentKeepaliveInterval: -1 }, false, 'Backend.PersistentKeepaliveInterval', /between 0 and 65535/],
    [{ PersistentKeepaliveInterval: 2.5 }, false, 'Backend.PersistentKeepaliveInterval', /must be an integer/],
  ])('%j (dual stack: %s): refused, naming %s', (raw, ipv6, field, why) => {
    const got = refusal(() => parseWireguardBackend(raw as Record<string, unknown>, ipv6));
    expect(got.field).toBe(field);
    expect(got.reason).toMatch(why);
  });

  test('a bad PSK is never quoted in the error (it is a secret)', () => {
    const almost = PSK.slice(0, 43) + '!';
    expect(refusal(() => parseWireguardBackend({ PSK: almost }, false)).reason).not.toContain(PSK.slice(0, 20));
  });

  test('one port for both families is fine where one device serves both', () => {
    expect(parseWireguardBackend({ ListenPort: 5000, ListenPortV6: 5000, Mode: 'auto' }, true).listenPort).toBe(5000);
  });
});

describe('in a network config', () => {
  test('keys match case-insensitively as upstream reads them: a bad one is reported by its own name, before the type', () => {
    expect(refusal(() => checkNetworkConfig(JSON.stringify({ Network: '198.19.0.0/16', Backend: { type: 'wireguard', listenport: 0 } })))).toEqual({
      field: 'Backend.ListenPort',
      reason: 'must be between 1 and 65535, got 0',
    });
  });

  // The backend runs now: a valid config was refused by Backend.Type while it did not.
  test('a valid wireguard config is accepted, and printed back in upstream\'s keys (the PSK as stored, so that it can be set again)', () => {
    const { config, unknownKeys } = checkNetworkConfig(JSON.stringify({ Network: '198.19.0.0/16', Backend: { Type: 'wireguard', PSK } }));
    expect(unknownKeys).toEqual([]);
    expect(config.backend).toEqual({ type: 'wireguard', listenPort: 51820, listenPortV6: 51821, mtu: null, psk: PSK, persistentKeepaliveInterval: 0, mode: 'separate' });
    const printed = formatNetworkConfig(config);
    expect(printed['Backend']).toEqual({ Type: 'wireguard', PSK, ListenPort: 51820, ListenPortV6: 51821, PersistentKeepaliveInterval: 0, Mode: 'separate' });
    expect(parseNetworkConfig(JSON.stringify(printed))).toEqual(config);
  });

  test('an unknown backend names wireguard among those supported', () => {
    expect(refusal(() => checkNetworkConfig(JSON.stringify({ Network: '198.19.0.0/16', Backend: { Type: 'ipsec' } })))).toEqual({
      field: 'Backend.Type',
      reason: 'unknown backend "ipsec" (supported: udp, vxlan, host-gw, wireguard)',
    });
  });
});
