// IPv4 routes in the main table.
import { ipJson, type IpOptions } from './ip.js';

export interface RouteSpec {
  /** "a.b.c.d/len" */
  dst: string;
  via?: string;
  dev: string;
  onlink?: boolean;
}

export interface RouteEntry {
  dst: string;
  gateway: string | null;
  dev: string;
  onlink: boolean;
  protocol: string | null;
}

interface RawRoute {
  dst: string;
  gateway?: string;
  dev?: string;
  flags?: string[];
  protocol?: string;
}

function specWords(r: RouteSpec): string[] {
  return [r.dst, ...(r.via ? ['via', r.via] : []), 'dev', r.dev, ...(r.onlink ? ['onlink'] : [])];
}

export function routeReplaceCommand(r: RouteSpec): string[] {
  return ['route', 'replace', ...specWords(r)];
}

export function routeDeleteCommand(r: RouteSpec): string[] {
  return ['route', 'del', ...specWords(r)];
}

/** Main-table IPv4 routes, optionally only those through `dev`. A /32 or /N dst is always "a.b.c.d/N". */
export async function listRoutes(filter: { dev?: string } = {}, opts: IpOptions = {}): Promise<RouteEntry[]> {
  const raw = await ipJson<RawRoute>(['-4', 'route', 'show', 'table', 'main', ...(filter.dev ? ['dev', filter.dev] : [])], opts);
  return raw.map((r) => ({
    dst: r.dst === 'default' ? '0.0.0.0/0' : r.dst.includes('/') ? r.dst : `${r.dst}/32`,
    gateway: r.gateway ?? null,
    dev: r.dev ?? filter.dev ?? '',
    onlink: r.flags?.includes('onlink') ?? false,
    protocol: r.protocol ?? null,
  }));
}

export interface RouteLookup {
  dev: string;
  gateway: string | null;
}

/** `ip route get`: how the kernel would reach `ip`, or null when it cannot. */
export async function routeGet(ip: string, opts: IpOptions = {}): Promise<RouteLookup | null> {
  try {
    const [r] = await ipJson<{ dev: string; gateway?: string }>(['-4', 'route', 'get', ip], opts);
    return r ? { dev: r.dev, gateway: r.gateway ?? null } : null;
  } catch {
    return null;
  }
}
