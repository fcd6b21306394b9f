// WireGuard keys (private, public, preshared) as wg(8) and upstream flannel write them: the standard
// base64 of 32 bytes, 44 characters ending in one '='. The one parser for that format: lease values
// (a peer's PublicKey), the network config (PSK) and the key file all go through it.
import { createHash } from 'node:crypto';

export const WG_KEY_BYTES = 32;

/**
 * 43 base64 digits and '=': the last digit carries 2 bits of padding, which must be zero, so that
 * each key has exactly one spelling (Go's decoder would accept others; a key is compared as text).
 */
const CANONICAL = /^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$/;

/** Why `text` is not a WireGuard key, or null when it is one. Never quotes the text: it may be a secret. */
export function wgKeyProblem(text: unknown): string | null {
  if (typeof text !== 'string') return `a key must be a string, got ${text === null ? 'null' : typeof text}`;
  if (text.length !== 44) return `a key is 44 characters of base64 (32 bytes), got ${text.length} characters`;
  if (!CANONICAL.test(text)) return 'a key is the standard base64 of 32 bytes (A-Z a-z 0-9 + /, ending in one "=")';
  return null;
}

/** The 32 bytes of a key in canonical base64; throws with the reason otherwise. */
export function parseWgKey(text: unknown): Buffer {
  const problem = wgKeyProblem(text);
  if (problem !== null) throw new Error(problem);
  return Buffer.from(text as string, 'base64');
}

export function formatWgKey(bytes: Uint8Array): string {
  if (bytes.length !== WG_KEY_BYTES) throw new Error(`a WireGuard key is ${WG_KEY_BYTES} bytes, got ${bytes.length}`);
  return Buffer.from(bytes).toString('base64');
}

/**
 * A short name for a secret key (a preshared key): the first 16 hex digits of its SHA-256. It tells two
 * keys apart in comparisons and logs without the key itself ever leaving the place that holds it.
 */
export function wgKeyFingerprint(key: string): string {
  return createHash('sha256').update(parseWgKey(key)).digest('hex').slice(0, 16);
}
