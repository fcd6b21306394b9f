// Chooses the underlay interface the way upstream flanneld does: --iface (names or IPs, first usable
// wins), then --iface-regex, then --iface-can-reach, else the interface of the default route.
import type { ExternalInterface } from '../backend/backend.js';
import { ipJson } from '../routes/ip.js';
import { isIp4 } from '../subnet/ip4.js';
import { formatIp6, isIp6, parseIp6 } from '../subnet/ip6.js';

interface IpAddrLink {
  ifname: string;
  mtu: number;
  flags?: string[];
  addr_info?: { family: string; local: string; prefixlen: number; scope?: string }[];
}

export interface IfaceSelection {
  iface: string[];
  ifaceRegex: string[];
  ifaceCanReach: string | null;
  publicIP: string | null;
  /** --public-ipv6: the IPv6 address other nodes send to (default: the interface's global IPv6 address). */
  publicIPv6?: string | null;
}

function ipv4Of(link: IpAddrLink): string | undefined {
  return link.addr_info?.find((a) => a.family === 'inet')?.local;
}

/** The link's first global IPv6 address (link-local ones cannot be a peer's next hop across nodes). */
function ipv6Of(link: IpAddrLink): string | undefined {
  return link.addr_info?.find((a) => a.family === 'inet6' && (a.scope === undefined || a.scope === 'global'))?.local;
}

function toExternal(link: IpAddrLink, ip: string, sel: IfaceSelection): ExternalInterface {
  const ifaceIPv6 = ipv6Of(link) ?? null;
  const v6 = sel.publicIPv6 ?? ifaceIPv6;
  return { name: link.ifname, ifaceIP: ip, publicIP: sel.publicIP ?? ip, mtu: link.mtu, ifaceIPv6, publicIPv6: v6 === null ? null : formatIp6(parseIp6(v6)) };
}

/** The interface of the first route `ip <routeArgs>` prints, with the route's source address or the interface's. */
async function viaRoute(links: IpAddrLink[], routeArgs: string[], sel: IfaceSelection, notFound: string): Promise<ExternalInterface> {
  const [route] = await ipJson<{ dev: string; prefsrc?: string }>(routeArgs);
  const link = route && links.find((l) => l.ifname === route.dev);
  const ip = link && (route.prefsrc ?? ipv4Of(link));
  if (!link || !ip) throw new Error(notFound);
  return toExternal(link, ip, sel);
}

export async function findExternalInterface(sel: IfaceSelection): Promise<ExternalInterface> {
  if (sel.publicIP !== null && !isIp4(sel.publicIP)) throw new Error(`--public-ip "${sel.publicIP}" is not an IPv4 address`);
  if (sel.publicIPv6 && !isIp6(sel.publicIPv6)) throw new Error(`--public-ipv6 "${sel.publicIPv6}" is not an IPv6 address`);
  const links = await ipJson<IpAddrLink>(['addr', 'show']);

  if (sel.iface.length > 0) {
    for (const want of sel.iface) {
      if (isIp6(want)) {
        // An interface named by its IPv6 address: that link, with its IPv4 address for the IPv4 side.
        const link = links.find((l) => l.addr_info?.some((a) => a.family === 'inet6' && isIp6(a.local) && parseIp6(a.local) === parseIp6(want)));
        const ip = link && ipv4Of(link);
        if (link && ip) return toExternal(link, ip, sel);
        continue;
      }
      const byIp = isIp4(want);
      const link = links.find((l) => (byIp ? l.addr_info?.some((a) => a.local === want) : l.ifname === want));
      const ip = link && (byIp ? want : ipv4Of(link));
      if (link && ip) return toExternal(link, ip, sel);
    }
    throw new Error(`--iface: none of ${sel.iface.join(', ')} is an interface with an IPv4 address`);
  }

  if (sel.ifaceRegex.length > 0) {
    for (const pattern of sel.ifaceRegex) {
      const re = new RegExp(pattern);
      for (const link of links) {
        const ips = (link.addr_info ?? []).filter((a) => a.family === 'inet').map((a) => a.local);
        if (ips.length === 0) continue;
        if (re.test(link.ifname)) return toExternal(link, ips[0]!, sel);
        const ip = ips.find((a) => re.test(a));
        if (ip) return toExternal(link, ip, sel);
      }
    }
    throw new Error(`--iface-regex: no interface with an IPv4 address matches ${sel.ifaceRegex.join(', ')}`);
  }

  if (sel.ifaceCanReach !== null) {
    if (!isIp4(sel.ifaceCanReach)) throw new Error(`--iface-can-reach "${sel.ifaceCanReach}" is not an IPv4 address`);
    return viaRoute(links, ['route', 'get', sel.ifaceCanReach], sel, `--iface-can-reach: no interface with an IPv4 address routes to ${sel.ifaceCanReach}`);
  }

  return viaRoute(links, ['-4', 'route', 'show', 'default'], sel, 'no default route with an IPv4 address: choose the interface with --iface');
}
