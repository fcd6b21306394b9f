// The host-gw backend's view of the kernel: the routes of either family on the underlay interface,
// the underlay's on-link prefixes, and the plan that turns wanted routes into `ip -batch` lines.
// Planning is pure (Map lookups, linear in routes) so event handling and resync share it and tests
// can check it without a kernel.
import { ipJson, type IpOptions } from '../../routes/ip.js';

export type Family = 4 | 6;

export interface KernelRoute {
  /** "addr/len" as the kernel prints it (a host route gets its /32 or /128). */
  dst: string;
  gateway: string | null;
  protocol: string | null;
}

interface RawRoute {
  dst: string;
  gateway?: string;
  protocol?: string;
}

/** Main-table routes of one family through `dev`. */
export async function listDevRoutes(family: Family, dev: string, opts: IpOptions = {}): Promise<KernelRoute[]> {
  const raw = await ipJson<RawRoute>([`-${family}`, 'route', 'show', 'table', 'main', 'dev', dev], opts);
  return raw.map((r) => ({
    dst: r.dst === 'default' ? (family === 4 ? '0.0.0.0/0' : '::/0') : r.dst.includes('/') ? r.dst : `${r.dst}/${family === 4 ? 32 : 128}`,
    gateway: r.gateway ?? null,
    protocol: r.protocol ?? null,
  }));
}

interface RawAddrLink {
  addr_info?: { family: string; local: string; prefixlen: number; scope?: string }[];
}

/** The global-scope addresses of one family on `dev`, as "addr/len" (their prefixes are on-link). */
export async function listDevAddrs(family: Family, dev: string, opts: IpOptions = {}): Promise<string[]> {
  const links = await ipJson<RawAddrLink>([`-${family}`, 'addr', 'show', 'dev', dev], opts);
  return links
    .flatMap((l) => l.addr_info ?? [])
    .filter((a) => a.family === (family === 4 ? 'inet' : 'inet6') && (a.scope === undefined || a.scope === 'global'))
    .map((a) => `${a.local}/${a.prefixlen}`);
}

/** `ip route get`: the device and gateway the kernel would use for `ip`, or null when unreachable. */
export async function routeLookup(family: Family, ip: string, opts: IpOptions = {}): Promise<{ dev: string; gateway: string | null } | null> {
  try {
    const [r] = await ipJson<{ dev: string; gateway?: string }>([`-${family}`, 'route', 'get', ip], opts);
    return r ? { dev: r.dev, gateway: r.gateway ?? null } : null;
  } catch {
    return null;
  }
}

export interface RoutePlan {
  /** `ip -batch` lines: deletions first, then additions. */
  commands: string[][];
  added: number;
  removed: number;
}

/**
 * The commands that make the kernel's routes on `dev` match `wanted` (dst → gateway). Only routes that
 * `isOurs` recognises (inside the flannel network, with a gateway, of the subnet length) are removed.
 */
export function planRoutes(
  dev: string,
  wanted: ReadonlyMap<string, string>,
  have: readonly KernelRoute[],
  isOurs: (dst: string) => boolean,
): RoutePlan {
  // No family flag: `ip -batch` takes none per line, and the addresses name the family anyway.
  const present = new Map<string, KernelRoute>();
  for (const r of have) present.set(r.dst, r);
  const del: string[][] = [];
  const add: string[][] = [];
  for (const r of have) {
    if (r.protocol === 'kernel' || r.gateway === null || wanted.has(r.dst) || !isOurs(r.dst)) continue;
    del.push(['route', 'del', r.dst, 'via', r.gateway, 'dev', dev]);
  }
  for (const [dst, via] of wanted) {
    if (present.get(dst)?.gateway === via) continue;
    add.push(['route', 'replace', dst, 'via', via, 'dev', dev]);
  }
  return { commands: [...del, ...add], added: add.length, removed: del.length };
}

/** How many lines of an `ip -batch -force` run failed (ip prints "Command failed -:N" for each). */
export function failedBatchLines(stderr: string): number {
  return (stderr.match(/Command failed/g) ?? []).length;
}
