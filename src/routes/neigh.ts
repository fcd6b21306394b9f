// IPv4 neighbour (ARP) entries.
import { ip, ipJson, parseLines, type IpOptions } from './ip.js';
import { deviceWord, ipWord, macWord } from './words.js';

export interface NeighEntry {
  ip: string;
  mac: string | null;
  permanent: boolean;
}

interface RawNeigh {
  dst: string;
  lladdr?: string;
  state?: string[];
}

/** A permanent entry: never aged out, never re-resolved (vxlan peers answer no ARP). */
export function neighReplaceCommand(dev: string, ip: string, mac: string): string[] {
  return ['neigh', 'replace', ipWord(ip), 'lladdr', macWord(mac), 'dev', deviceWord(dev), 'nud', 'permanent'];
}

export function neighDeleteCommand(dev: string, ip: string): string[] {
  return ['neigh', 'del', ipWord(ip), 'dev', deviceWord(dev)];
}

export async function listNeighbours(dev: string, opts: IpOptions = {}): Promise<NeighEntry[]> {
  const raw = await ipJson<RawNeigh>(['-4', 'neigh', 'show', 'dev', dev, 'nud', 'all'], opts);
  return raw.map((n) => ({ ip: n.dst, mac: n.lladdr?.toLowerCase() ?? null, permanent: n.state?.includes('PERMANENT') ?? false }));
}

/** One line of `ip -4 neigh show dev D nud all`, e.g. "198.19.22.0 lladdr f6:bd:17:d2:cf:1b PERMANENT". */
export function parseNeighLine(line: string): NeighEntry | null {
  const w = line.split(' ').filter((x) => x !== '');
  if (w.length < 2 || w[0] === '') return null;
  const at = w.indexOf('lladdr');
  return { ip: w[0]!, mac: at >= 0 ? (w[at + 1] ?? '').toLowerCase() || null : null, permanent: w.includes('PERMANENT') };
}

/** The `ip` arguments of the text dump of a device's IPv4 neighbours. */
export function neighboursArgs(dev: string): string[] {
  return ['-4', 'neigh', 'show', 'dev', deviceWord(dev), 'nud', 'all'];
}

/** The device's IPv4 neighbours, from the text dump. */
export async function readNeighbours(dev: string, opts: IpOptions = {}): Promise<NeighEntry[]> {
  return parseLines(await ip(neighboursArgs(dev), opts), parseNeighLine);
}
