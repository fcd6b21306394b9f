// Forwarding-database entries of a vxlan device — which underlay address (IPv4 or IPv6) a VTEP MAC
// lives at — through iproute2. `ip` cannot program these; `bridge fdb` (same package, same batch
// format) can.
import { parseIp4 } from '../common/ip4.js';
import { parseIp6 } from '../common/ip6.js';
import { type FdbEntry, fdbKey, formatIp } from './entries.js';
import { bridge, parseLines, type IpOptions } from './ip.js';
import { deviceWord, ipWord, macWord } from './words.js';

/** A permanent entry on the device itself ("self"), as upstream flannel installs it. */
export function fdbSetCommand(e: FdbEntry): string[] {
  return ['fdb', 'replace', macWord(e.mac), 'dev', deviceWord(e.dev), 'dst', ipWord(formatIp(e.dst)), 'self', 'permanent'];
}

export function fdbDeleteCommand(e: FdbEntry): string[] {
  return ['fdb', 'del', macWord(e.mac), 'dev', deviceWord(e.dev), 'dst', ipWord(formatIp(e.dst)), 'self'];
}

/**
 * One line of `bridge fdb show dev D`, e.g. "f6:bd:17:d2:cf:1b dst 198.18.0.2 self permanent"; null
 * without a destination, and for the all-zero default entry.
 */
export function parseFdbLine(line: string, dev: string): FdbEntry | null {
  const w = line.split(' ').filter((x) => x !== '');
  const at = w.indexOf('dst');
  const mac = (w[0] ?? '').toLowerCase();
  const text = w[at + 1];
  if (at < 0 || !text || mac === '00:00:00:00:00:00') return null;
  let dst;
  try {
    dst = text.includes(':') ? parseIp6(text) : parseIp4(text);
  } catch {
    return null;
  }
  return { kind: 'fdb', key: fdbKey(dev, mac), dev, mac, dst, permanent: w.includes('permanent') };
}

/** The `bridge` arguments of the text dump of a device's FDB. */
export function fdbArgs(dev: string): string[] {
  return ['fdb', 'show', 'dev', deviceWord(dev)];
}

/** The device's FDB entries that point at a remote. */
export async function readFdb(dev: string, opts: IpOptions = {}): Promise<FdbEntry[]> {
  return parseLines(await bridge(fdbArgs(dev), opts), (line) => parseFdbLine(line, dev));
}
