// IPv4 neighbour (ARP) entries.
import { ipJson, type IpOptions } from './ip.js';

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
  return ['neigh', 'replace', ip, 'lladdr', mac, 'dev', dev, 'nud', 'permanent'];
}

export function neighDeleteCommand(dev: string, ip: string): string[] {
  return ['neigh', 'del', ip, 'dev', dev];
}

export async function listNeighbours(dev: string, opts: IpOptions = {}): Promise<NeighEntry[]> {
  const raw = await ipJson<RawNeigh>(['-4', 'neigh', 'show', 'dev', dev, 'nud', 'all'], opts);
  return raw.map((n) => ({ ip: n.dst, mac: n.lladdr?.toLowerCase() ?? null, permanent: n.state?.includes('PERMANENT') ?? false }));
}
