// IPv4 routes in the main table.
import { ip, ipJson, parseLines, type IpOptions } from './ip.js';
import { cidrWord, deviceWord, ipWord } from './words.js';

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
  return [cidrWord(r.dst), ...(r.via ? ['via', ipWord(r.via)] : []), 'dev', deviceWord(r.dev), ...(r.onlink ? ['onlink'] : [])];
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

const ROUTE_TYPES = new Set(['unicast', 'local', 'broadcast', 'multicast', 'throw', 'unreachable', 'prohibit', 'blackhole', 'nat', 'anycast']);

/**
 * One line of `ip -4 route show` (text form), e.g. "198.19.22.0/24 via 198.19.22.0 dev flannel.1
 * onlink"; null for lines that are not a unicast route (other types, multipath continuation lines).
 */
export function parseRouteLine(line: string): RouteEntry | null {
  if (line === '' || line[0] === ' ' || line[0] === '\t') return null;
  const w = line.split(' ').filter((x) => x !== '');
  if (ROUTE_TYPES.has(w[0]!)) {
    if (w[0] !== 'unicast') return null;
    w.shift();
  }
  const first = w[0]!;
  const entry: RouteEntry = { dst: first === 'default' ? '0.0.0.0/0' : first.includes('/') ? first : `${first}/32`, gateway: null, dev: '', onlink: false, protocol: null };
  for (let i = 1; i < w.length; i++) {
    const word = w[i]!;
    if (word === 'via') entry.gateway = w[++i] ?? null;
    else if (word === 'dev') entry.dev = w[++i] ?? '';
    else if (word === 'proto') entry.protocol = w[++i] ?? null;
    else if (word === 'onlink') entry.onlink = true;
    else if (word === 'metric' || word === 'src' || word === 'scope' || word === 'table' || word === 'tos' || word === 'mtu') i++;
  }
  return entry;
}

/** The `ip` arguments of the text dump of main-table IPv4 routes inside `within`. */
export function routesWithinArgs(within: string): string[] {
  return ['-4', 'route', 'show', 'table', 'main', 'root', cidrWord(within)];
}

/** Main-table IPv4 routes whose destination lies inside `within` ("a.b.c.d/len"), from the text dump. */
export async function readRoutesWithin(within: string, opts: IpOptions = {}): Promise<RouteEntry[]> {
  return parseLines(await ip(routesWithinArgs(within), opts), parseRouteLine);
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
