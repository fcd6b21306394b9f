// This node's WireGuard key: made once, kept in its file (mode 0600, written atomically), and the
// public key derived as WireGuard derives it (RFC 7748's test vector, and wg(8) itself).
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { DEFAULT_KEY_FILE, generatePrivateKey, keyFilePath, loadOrCreateKey, publicKeyOf } from '../src/backend/wireguard/keys.js';

const dir = mkdtempSync(join(tmpdir(), 'flannel-wgkey-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const hexKey = (hex: string): string => Buffer.from(hex, 'hex').toString('base64');

describe('public keys', () => {
  test("RFC 7748's X25519 test vector (Alice)", () => {
    expect(publicKeyOf(hexKey('77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a'))).toBe(
      hexKey('8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a'),
    );
  });

  test('the same as `wg pubkey` for keys we make and keys `wg genkey` makes', () => {
    const keys = [...Array.from({ length: 10 }, generatePrivateKey), ...Array.from({ length: 10 }, () => execFileSync('wg', ['genkey']).toString().trim())];
    for (const key of keys) expect(publicKeyOf(key)).toBe(execFileSync('wg', ['pubkey'], { input: key + '\n' }).toString().trim());
  });

  test('new private keys are clamped as Curve25519 wants (as `wg genkey` makes them) and differ', () => {
    const a = Buffer.from(generatePrivateKey(), 'base64');
    expect(a[0]! & 7).toBe(0);
    expect(a[31]! & 0xc0).toBe(0x40);
    expect(generatePrivateKey()).not.toBe(generatePrivateKey());
  });
});

describe('the key file', () => {
  test("upstream's path by default; WIREGUARD_KEY_FILE moves it", () => {
    expect(keyFilePath({})).toBe(DEFAULT_KEY_FILE);
    expect(DEFAULT_KEY_FILE).toBe('/run/flannel/wgkey');
    expect(keyFilePath({ WIREGUARD_KEY_FILE: '/etc/flannel/key' })).toBe('/etc/flannel/key');
    expect(keyFilePath({ WIREGUARD_KEY_FILE: '' })).toBe(DEFAULT_KEY_FILE);
  });

  test('made once (its directory too), mode 0600, as upstream writes it; kept and read back after', () => {
    const file = join(dir, 'run', 'flannel', 'wgkey');
    const first = loadOrCreateKey(file);
    expect(first.created).toBe(true);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    // Upstream reads the file's bytes as the key: no newline.
    expect(readFileSync(file, 'utf8')).toBe(first.privateKey);
    expect(first.publicKey).toBe(publicKeyOf(first.privateKey));
    const again = loadOrCreateKey(file);
    expect(again).toEqual({ ...first, created: false });
    // Written through a temporary file renamed into place: nothing else left in the directory.
    expect(readdirSync(join(dir, 'run', 'flannel'))).toEqual(['wgkey']);
  });

  test('a key written by `wg genkey > file` (with a newline) is read', () => {
    const file = join(dir, 'genkey');
    const key = execFileSync('wg', ['genkey']).toString();
    writeFileSync(file, key, { mode: 0o600 });
    expect(loadOrCreateKey(file)).toMatchObject({ privateKey: key.trim(), created: false, tightened: false });
  });

  test('a key file others can read is made 0600, and the caller told', () => {
    const file = join(dir, 'open');
    writeFileSync(file, generatePrivateKey(), { mode: 0o644 });
    chmodSync(file, 0o644);
    expect(loadOrCreateKey(file).tightened).toBe(true);
    expect(statSync(file).mode & 0o777).toBe(0o600);
  });

  test('a file that holds no key is an error naming the file, never replaced, and its content never shown', () => {
    const file = join(dir, 'broken');
    const content = 'not-a-key-but-maybe-secret';
    writeFileSync(file, content, { mode: 0o600 });
    expect(() => loadOrCreateKey(file)).toThrow(new RegExp(`^WireGuard key file ${file} holds no private key: a key is 44 characters`));
    try {
      loadOrCreateKey(file);
    } catch (err) {
      expect((err as Error).message).not.toContain(content);
    }
    expect(readFileSync(file, 'utf8')).toBe(content);
  });

  test('a key file that cannot be read is an error naming it', () => {
    const file = join(dir, 'a-directory');
    mkdirSync(file);
    expect(() => loadOrCreateKey(file)).toThrow(new RegExp(`^WireGuard key file ${file}: EISDIR`));
  });
});
