// Forwarding-database entries of a vxlan device: which underlay IP a VTEP MAC lives at. iproute2's
// `ip` cannot program these; `bridge fdb` (same package, same batch format) can.
import { bridge, bridgeJson, parseLines, type IpOptions } from './ip.js';
import { deviceWord, ipWord, macWord } from './words.js';

export interface FdbEntry {
  mac: string;
  dst: string;
  permanent: boolean;
}

interface RawFdb {
  mac: string;
  dst?: string;
  state?: string;
}

/** A permanent entry on the device itself ("self"), as upstream flannel installs it. */
export function fdbReplaceCommand(dev: string, mac: string, dst: string): string[] {
  return ['fdb', 'replace', macWord(mac), 'dev', deviceWord(dev), 'dst', ipWord(dst), 'self', 'permanent'];
}

export function fdbDeleteCommand(dev: string, mac: string, dst: string): string[] {
  return ['fdb', 'del', macWord(mac), 'dev', deviceWord(dev), 'dst', ipWord(dst), 'self'];
}

/** Unicast entries that point at a remote (entries with no dst and all-zero defaults are left out). */
export async function listFdb(dev: string, opts: IpOptions = {}): Promise<FdbEntry[]> {
  const raw = await bridgeJson<RawFdb>(['fdb', 'show', 'dev', dev], opts);
  return raw
    .filter((e): e is RawFdb & { dst: string } => typeof e.dst === 'string' && e.mac !== '00:00:00:00:00:00')
    .map((e) => ({ mac: e.mac.toLowerCase(), dst: e.dst, permanent: e.state === 'permanent' }));
}

/** One line of `bridge fdb show dev D`, e.g. "f6:bd:17:d2:cf:1b dst 198.18.0.2 self permanent"; null without a dst. */
export function parseFdbLine(line: string): FdbEntry | null {
  const w = line.split(' ').filter((x) => x !== '');
  const at = w.indexOf('dst');
  const mac = (w[0] ?? '').toLowerCase();
  if (at < 0 || !w[at + 1] || mac === '00:00:00:00:00:00') return null;
  return { mac, dst: w[at + 1]!, permanent: w.includes('permanent') };
}

/** The `bridge` arguments of the text dump of a device's FDB. */
export function fdbArgs(dev: string): string[] {
  return ['fdb', 'show', 'dev', deviceWord(dev)];
}

/** The same entries as listFdb, from the text dump. */
export async function readFdb(dev: string, opts: IpOptions = {}): Promise<FdbEntry[]> {
  return parseLines(await bridge(fdbArgs(dev), opts), parseFdbLine);
}
