// IPv4 addresses on a link.
import { ipJson, type IpOptions } from './ip.js';
import { cidrWord, deviceWord } from './words.js';

export interface AddrEntry {
  /** "a.b.c.d/len" */
  cidr: string;
}

interface RawAddrLink {
  addr_info?: { family: string; local: string; prefixlen: number }[];
}

export async function listIp4Addrs(dev: string, opts: IpOptions = {}): Promise<AddrEntry[]> {
  const links = await ipJson<RawAddrLink>(['-4', 'addr', 'show', 'dev', dev], opts);
  return links.flatMap((l) => l.addr_info ?? []).filter((a) => a.family === 'inet').map((a) => ({ cidr: `${a.local}/${a.prefixlen}` }));
}

export function addrReplaceCommand(dev: string, cidr: string): string[] {
  return ['addr', 'replace', cidrWord(cidr), 'dev', deviceWord(dev)];
}

export function addrDeleteCommand(dev: string, cidr: string): string[] {
  return ['addr', 'del', cidrWord(cidr), 'dev', deviceWord(dev)];
}
