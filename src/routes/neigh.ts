// Neighbour entries of both families through iproute2: the batch lines, the parser of `ip neigh show`
// text and the reader of a device's neighbours.
import { parseIp4 } from '../common/ip4.js';
import { parseIp6 } from '../common/ip6.js';
import { type NeighEntry, formatIp, neighKey } from './entries.js';
import { ip, parseLines, type IpOptions } from './ip.js';
import { deviceWord, ipWord, macWord } from './words.js';

/** A permanent entry: never aged out, never re-resolved (vxlan peers answer no ARP or ND). */
export function neighSetCommand(n: NeighEntry): string[] {
  return ['neigh', 'replace', ipWord(formatIp(n.ip)), 'lladdr', macWord(n.mac), 'dev', deviceWord(n.dev), 'nud', 'permanent'];
}

export function neighDeleteCommand(n: NeighEntry): string[] {
  return ['neigh', 'del', ipWord(formatIp(n.ip)), 'dev', deviceWord(n.dev)];
}

/**
 * One line of `ip neigh show dev D nud all`, e.g. "198.19.22.0 lladdr f6:bd:17:d2:cf:1b PERMANENT" or
 * "2001:2:1:5:: lladdr ... PERMANENT"; null for an entry without a link-layer address, and for the
 * NOARP ones the kernel derives itself (IPv6 multicast groups on an IPv6-capable device).
 */
export function parseNeighLine(line: string, dev: string): NeighEntry | null {
  const w = line.split(' ').filter((x) => x !== '');
  const at = w.indexOf('lladdr');
  if (w.length < 3 || at < 0 || !w[at + 1] || w.includes('NOARP')) return null;
  let addr;
  try {
    addr = w[0]!.includes(':') ? parseIp6(w[0]!) : parseIp4(w[0]!);
  } catch {
    return null;
  }
  return { kind: 'neigh', key: neighKey(dev, formatIp(addr)), dev, ip: addr, mac: w[at + 1]!.toLowerCase(), permanent: w.includes('PERMANENT') };
}

/** The `ip` arguments of the text dump of a device's neighbours (both families). */
export function neighboursArgs(dev: string): string[] {
  return ['neigh', 'show', 'dev', deviceWord(dev), 'nud', 'all'];
}

/** The device's neighbours that have a link-layer address, both families. */
export async function readNeighbours(dev: string, opts: IpOptions = {}): Promise<NeighEntry[]> {
  return parseLines(await ip(neighboursArgs(dev), opts), (line) => parseNeighLine(line, dev));
}
