// Forwarding-database entries of a vxlan device: which underlay IP a VTEP MAC lives at. iproute2's
// `ip` cannot program these; `bridge fdb` (same package, same batch format) can.
import { bridgeJson, type IpOptions } from './ip.js';

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
  return ['fdb', 'replace', mac, 'dev', dev, 'dst', dst, 'self', 'permanent'];
}

export function fdbDeleteCommand(dev: string, mac: string, dst: string): string[] {
  return ['fdb', 'del', mac, 'dev', dev, 'dst', dst, 'self'];
}

/** Unicast entries that point at a remote (entries with no dst and all-zero defaults are left out). */
export async function listFdb(dev: string, opts: IpOptions = {}): Promise<FdbEntry[]> {
  const raw = await bridgeJson<RawFdb>(['fdb', 'show', 'dev', dev], opts);
  return raw
    .filter((e): e is RawFdb & { dst: string } => typeof e.dst === 'string' && e.mac !== '00:00:00:00:00:00')
    .map((e) => ({ mac: e.mac.toLowerCase(), dst: e.dst, permanent: e.state === 'permanent' }));
}
