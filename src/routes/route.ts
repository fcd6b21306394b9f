// Main-table routes of both families through iproute2: the batch lines that put a route in or take
// it out, the parser of `ip route show` text, the reader of the routes inside a prefix, and `ip route
// get` (how the kernel would reach an address).
import { Ip4Net, parseIp4 } from '../common/ip4.js';
import { Ip6Net, parseIp6 } from '../common/ip6.js';
import { type Family, type IpAddr, type IpNet, type RouteEntry, RTPROT_BOOT, familyOf, formatIp, netFamily, routeKey } from './entries.js';
import { ip, ipJson, parseLines, type IpOptions } from './ip.js';
import { cidrWord, deviceWord, ipWord, numberWord } from './words.js';

/**
 * The `ip -batch` line that puts `r` in: `route replace` for a unicast route, `route add` for a
 * blackhole (never replace: that would take over whatever route holds the destination, such as a
 * bridge's own prefix route). Our routes are all scope global: `ip` would give one without a gateway
 * link scope unless told.
 */
export function routeSetCommand(r: RouteEntry): string[] {
  if (r.type === 'blackhole') return ['route', 'add', 'blackhole', cidrWord(r.dst.toString())];
  return ['route', 'replace', ...routeWords(r), ...(r.via === null ? ['scope', 'global'] : [])];
}

/**
 * The `ip -batch` line that takes `r` out. A blackhole has no gateway or device to tell it from
 * another route of its destination, so its protocol and metric (as read from the kernel) name it.
 */
export function routeDeleteCommand(r: RouteEntry): string[] {
  // Flags such as onlink do not take part in matching the route to delete.
  if (r.type === 'unicast') return ['route', 'del', ...routeWords({ ...r, onlink: false })];
  return [
    'route', 'del', 'blackhole', cidrWord(r.dst.toString()),
    ...(r.protocol !== undefined ? ['proto', numberWord(r.protocol)] : []),
    ...(r.metric !== undefined ? ['metric', numberWord(r.metric)] : []),
  ];
}

function routeWords(r: RouteEntry): string[] {
  return [
    cidrWord(r.dst.toString()),
    ...(r.via !== null ? ['via', ipWord(formatIp(r.via))] : []),
    ...(r.dev !== null ? ['dev', deviceWord(r.dev)] : []),
    ...(r.onlink ? ['onlink'] : []),
  ];
}

const PROTOCOLS: Record<string, number> = { redirect: 1, kernel: 2, boot: 3, static: 4, ra: 9, dhcp: 16 };
const OTHER_TYPES = new Set(['local', 'broadcast', 'multicast', 'throw', 'unreachable', 'prohibit', 'nat', 'anycast']);
/** Words of `ip route show` that are followed by a value this parser does not need. */
const VALUED = new Set(['src', 'scope', 'table', 'tos', 'mtu', 'pref', 'expires', 'realm', 'realms', 'hoplimit', 'advmss', 'rtt', 'rttvar', 'window', 'initcwnd', 'initrwnd', 'quickack', 'features', 'congctl', 'ttl-propagate', 'nhid', 'encap']);

function parseNet(text: string, family: Family): IpNet {
  if (text === 'default') return family === 4 ? new Ip4Net(0, 0) : new Ip6Net(0n, 0);
  const slash = text.indexOf('/');
  if (family === 4) return slash < 0 ? new Ip4Net(parseIp4(text), 32) : Ip4Net.parse(text);
  return slash < 0 ? new Ip6Net(parseIp6(text), 128) : Ip6Net.parse(text);
}

/**
 * One line of `ip -4|-6 route show` (text form), e.g. "198.19.22.0/24 via 198.19.22.0 dev flannel.1
 * onlink" or "blackhole 198.19.5.0/24"; null for other route types and multipath continuation lines.
 * iproute2 omits `proto boot` and a zero metric, so those are what their absence means.
 */
export function parseRouteLine(line: string, family: Family): RouteEntry | null {
  if (line === '' || line[0] === ' ' || line[0] === '\t') return null;
  try {
    return parseRouteWords(line.split(' ').filter((x) => x !== ''), family);
  } catch {
    return null; // an address this parser cannot read is no route of ours
  }
}

function parseRouteWords(w: string[], family: Family): RouteEntry | null {
  let type: RouteEntry['type'] = 'unicast';
  if (w[0] === 'blackhole' || w[0] === 'unicast') type = w.shift() === 'blackhole' ? 'blackhole' : 'unicast';
  else if (OTHER_TYPES.has(w[0]!)) return null;
  const dst = parseNet(w[0]!, family);
  let via: IpAddr | null = null;
  let dev: string | null = null;
  let onlink = false;
  let protocol = RTPROT_BOOT;
  let metric = 0;
  for (let i = 1; i < w.length; i++) {
    const word = w[i]!;
    if (word === 'via') {
      if (w[i + 1] === 'inet' || w[i + 1] === 'inet6') i++;
      const text = w[++i] ?? '';
      via = text.includes(':') ? parseIp6(text) : parseIp4(text);
    } else if (word === 'dev') dev = w[++i] ?? null;
    else if (word === 'proto') {
      const p = w[++i] ?? '';
      protocol = PROTOCOLS[p] ?? Number(p);
    } else if (word === 'metric') metric = Number(w[++i]);
    else if (word === 'onlink') onlink = true;
    else if (VALUED.has(word)) i++;
  }
  return { kind: 'route', key: routeKey(type, dst.toString()), dst, type, via, dev: type === 'blackhole' ? null : dev, onlink, protocol, metric };
}

/** The `ip` arguments of the text dump of main-table routes inside `root` (its family's). */
export function routesWithinArgs(root: IpNet): string[] {
  return [`-${netFamily(root)}`, 'route', 'show', 'table', 'main', 'root', cidrWord(root.toString())];
}

/** Main-table routes (unicast and blackhole) whose destination lies inside `root`. */
export async function readRoutesWithin(root: IpNet, opts: IpOptions = {}): Promise<RouteEntry[]> {
  const family = netFamily(root);
  return parseLines(await ip(routesWithinArgs(root), opts), (line) => parseRouteLine(line, family));
}

export interface RouteLookup {
  dev: string;
  gateway: IpAddr | null;
}

/** `ip route get`: how the kernel would reach `addr`, or null when it cannot. */
export async function routeGet(addr: IpAddr, opts: IpOptions = {}): Promise<RouteLookup | null> {
  const family = familyOf(addr);
  try {
    const [r] = await ipJson<{ dev: string; gateway?: string }>([`-${family}`, 'route', 'get', ipWord(formatIp(addr))], opts);
    if (!r) return null;
    return { dev: r.dev, gateway: r.gateway === undefined ? null : family === 6 ? parseIp6(r.gateway) : parseIp4(r.gateway) };
  } catch {
    return null;
  }
}
