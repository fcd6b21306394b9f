// This node's WireGuard key pair. The private key is made once and kept in a file (upstream's
// /run/flannel/wgkey, or WIREGUARD_KEY_FILE), so that a restarted daemon publishes the same public
// key and its peers need no change. Curve25519 (X25519) through node:crypto; the file holds the key
// as wg(8) and upstream write it (base64, no newline: upstream's reader takes the file's bytes as they
// are), mode 0600, written atomically.
import { createPrivateKey, createPublicKey, randomBytes } from 'node:crypto';
import { chmodSync, readFileSync, statSync } from 'node:fs';
import { writeFileAtomic } from '../../common/atomic-file.js';
import { formatWgKey, parseWgKey, wgKeyProblem } from '../../common/wg-key.js';

/** Where upstream keeps the key; WIREGUARD_KEY_FILE moves it (as upstream). */
export const DEFAULT_KEY_FILE = '/run/flannel/wgkey';
const KEY_FILE_MODE = 0o600;

export function keyFilePath(env: NodeJS.ProcessEnv = process.env): string {
  const path = env['WIREGUARD_KEY_FILE'];
  return path !== undefined && path !== '' ? path : DEFAULT_KEY_FILE;
}

/** A new private key, clamped as Curve25519 wants it and as `wg genkey` makes it. */
export function generatePrivateKey(): string {
  const key = randomBytes(32);
  key[0]! &= 248;
  key[31] = (key[31]! & 127) | 64;
  return formatWgKey(key);
}

/** PKCS#8 DER of an X25519 private key is this prefix (RFC 8410) and the 32 raw bytes. */
const X25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');

/** The public key of a private key (what `wg pubkey` prints). */
export function publicKeyOf(privateKey: string): string {
  const der = Buffer.concat([X25519_PKCS8_PREFIX, parseWgKey(privateKey)]);
  const jwk = createPublicKey(createPrivateKey({ key: der, format: 'der', type: 'pkcs8' })).export({ format: 'jwk' });
  return formatWgKey(Buffer.from(jwk.x!, 'base64url'));
}

export interface NodeKey {
  privateKey: string;
  publicKey: string;
  file: string;
  /** True when the key was made now (no file yet): peers will see a new public key. */
  created: boolean;
  /** True when the file could be read by others and its mode was set to 0600. */
  tightened: boolean;
}

/**
 * Reads the key from `file`, or makes one and writes it there when the file does not exist. A file
 * that exists but holds no key is an error, never replaced: a new key would cut this node off from
 * every peer until they all saw its new lease, and the file may be an operator's on purpose.
 */
export function loadOrCreateKey(file: string = keyFilePath()): NodeKey {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`WireGuard key file ${file}: ${(err as Error).message}`);
    const privateKey = generatePrivateKey();
    writeFileAtomic(file, privateKey, KEY_FILE_MODE);
    return { privateKey, publicKey: publicKeyOf(privateKey), file, created: true, tightened: false };
  }
  // `wg genkey > file` ends the key with a newline; upstream's own file has none.
  const privateKey = text.trim();
  const problem = wgKeyProblem(privateKey);
  if (problem !== null) throw new Error(`WireGuard key file ${file} holds no private key: ${problem}`);
  let tightened = false;
  if ((statSync(file).mode & 0o077) !== 0) {
    chmodSync(file, KEY_FILE_MODE);
    tightened = true;
  }
  return { privateKey, publicKey: publicKeyOf(privateKey), file, created: false, tightened };
}
