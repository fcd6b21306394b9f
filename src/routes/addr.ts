// Addresses on a link, both families, through iproute2: the reader, and the lines that add or remove one.
import type { Family } from './entries.js';
import type { IpOptions } from './ip.js';
import { type AddrEntry, readLinkState } from './link.js';
import { cidrWord, deviceWord } from './words.js';

/** The addresses on `dev` (both families, or one); an empty list when it does not exist. */
export async function readAddrs(dev: string, opts: IpOptions = {}, family?: Family): Promise<AddrEntry[]> {
  const addrs = (await readLinkState(dev, opts))?.addrs ?? [];
  return family === undefined ? addrs : addrs.filter((a) => a.family === family);
}

/** Puts `cidr` on `dev`; an IPv6 address without duplicate address detection (it is ours alone). */
export function addrReplaceCommand(dev: string, cidr: string): string[] {
  return ['addr', 'replace', cidrWord(cidr), 'dev', deviceWord(dev), ...(cidr.includes(':') ? ['nodad'] : [])];
}

export function addrDeleteCommand(dev: string, cidr: string): string[] {
  return ['addr', 'del', cidrWord(cidr), 'dev', deviceWord(dev)];
}
