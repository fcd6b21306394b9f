// Checks for every word that goes into an `ip -batch` / `bridge -batch` line. A batch is parsed by
// iproute2 itself: `#` starts a comment, quotes group words, and a word it cannot parse (a bad
// prefix, say) ends the whole batch — every later line is lost. So builders check each value for
// its exact kind before a line is made, and the batch writer refuses any word that could change
// how a line is split.
import { formatIp6, parseIp6 } from '../common/ip6.js';

export class BatchWordError extends Error {
  constructor(
    readonly kind: string,
    readonly word: string,
  ) {
    super(`refusing to pass ${JSON.stringify(word)} to ip -batch: not a canonical ${kind}`);
    this.name = 'BatchWordError';
  }
}

const OCTET = '(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])';
const IPV4 = new RegExp(`^${OCTET}(\\.${OCTET}){3}$`);
const CIDR = new RegExp(`^${OCTET}(\\.${OCTET}){3}/(3[0-2]|[12]?[0-9])$`);
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
// Linux accepts any byte but '/', ':' is reserved for aliases and whitespace; we accept the names
// the tools print and parse without quoting, at most IFNAMSIZ - 1 = 15 bytes.
const DEVICE = /^[A-Za-z0-9_.-]{1,15}$/;
const NUMBER = /^(0|[1-9][0-9]{0,9})$/;
/** What a word may never contain, whatever its kind: batch syntax, whitespace, control characters. */
const UNSAFE = /[#"'\\\s\p{C}]/u;

/** Dotted quad with no leading zeros, padding or other spelling: exactly as the kernel prints it. */
export function isCanonicalIp4(word: string): boolean {
  return IPV4.test(word);
}

/** An IPv6 address in the one text form the kernel prints (RFC 5952: lower case, `::` for the longest zero run). */
function isCanonicalIp6(word: string): boolean {
  try {
    return formatIp6(parseIp6(word)) === word;
  } catch {
    return false;
  }
}

/** A canonical IPv4 address (dotted quad) or IPv6 address (RFC 5952). */
export function ipWord(word: string): string {
  if (!IPV4.test(word) && !isCanonicalIp6(word)) throw new BatchWordError('IP address', word);
  return word;
}

/** A canonical IPv4 or IPv6 network: address/prefix length, with no host bits checked here (the kernel does). */
export function cidrWord(word: string): string {
  if (CIDR.test(word)) return word;
  const m = /^([0-9a-f:.]+)\/(12[0-8]|1[01][0-9]|[1-9]?[0-9])$/.exec(word);
  if (!m || !isCanonicalIp6(m[1]!)) throw new BatchWordError('CIDR', word);
  return word;
}

/** Six lower-case hex octets with colons. */
export function macWord(word: string): string {
  if (!MAC.test(word)) throw new BatchWordError('MAC address', word);
  return word;
}

export function deviceWord(word: string): string {
  if (!DEVICE.test(word) || word === '.' || word === '..') throw new BatchWordError('device name', word);
  return word;
}

export function numberWord(value: number | string): string {
  const word = String(value);
  if (!NUMBER.test(word)) throw new BatchWordError('number', word);
  return word;
}

/** The last check, on every word of every line: nothing that batch syntax would interpret. */
export function assertSafeWord(word: string): string {
  if (word === '' || UNSAFE.test(word)) throw new BatchWordError('batch word', word);
  return word;
}
