// Chooses the underlay interface the way upstream flanneld does: --iface (names or IPs, first usable
// wins), then --iface-regex, then --iface-can-reach, else the interface of the default route.
import type { ExternalInterface } from '../backend/backend.js';
import { ipJson } from '../routes/ip.js';
import { quoted } from '../common/printable.js';
import { isIp4, parseUnicastIp4 } from '../common/ip4.js';
import { formatIp6, isIp6, parseIp6 } from '../common/ip6.js';
import { parseUnicastIp6 } from '../subnet/lease-validation.js';

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
  // Without --public-ip the interface's address is published: it must be a node address too.
  const ifaceIP = sel.publicIP === null ? kernelIp4(ip, `interface ${link.ifname}'s address`) : ip;
  const ifaceIPv6 = ipv6Of(link) ?? null;
  const v6 = sel.publicIPv6 ?? ifaceIPv6;
  return { name: link.ifname, ifaceIP, publicIP: sel.publicIP ?? ifaceIP, mtu: link.mtu, ifaceIPv6, publicIPv6: v6 === null ? null : formatIp6(parseIp6(v6)) };
}

/** The interface of the first route `ip <routeArgs>` prints, with the route's source address or the interface's. */
async function viaRoute(links: IpAddrLink[], routeArgs: string[], sel: IfaceSelection, notFound: string): Promise<ExternalInterface> {
  const [route] = await ipJson<{ dev: string; prefsrc?: string }>(routeArgs);
  const link = route && links.find((l) => l.ifname === route.dev);
  const ip = link && (route.prefsrc ?? ipv4Of(link));
  if (!link || !ip) throw new Error(notFound);
  return toExternal(link, ip, sel);
}

/**
 * A Linux interface name: 1-15 bytes, none of them a space, '/', ':' or a control character (what
 * the kernel's dev_valid_name() allows, minus ':' which only old alias names use).
 */
const IFNAME = /^[\x21-\x2e\x30-\x39\x3b-\x7e]{1,15}$/;

/**
 * Checks our own inputs with the same parser as leases (issue 11): --public-ip must be a canonical,
 * unicast IPv4 address, each --iface an IPv4 address or a valid interface name, --iface-can-reach an
 * IPv4 address. A padded value ("10.0.0.5 ") is an error naming the flag, never a lease that breaks
 * every peer's `bridge -batch`.
 */
export function checkIfaceSelection(sel: IfaceSelection): void {
  if (sel.publicIP !== null) {
    try {
      parseUnicastIp4(sel.publicIP);
    } catch (err) {
      throw new Error(`--public-ip ${quoted(sel.publicIP)}: ${(err as Error).message}`);
    }
  }
  if (sel.publicIPv6) {
    try {
      parseUnicastIp6(sel.publicIPv6);
    } catch (err) {
      throw new Error(`--public-ipv6 ${quoted(sel.publicIPv6)}: ${(err as Error).message}`);
    }
  }
  for (const want of sel.iface) {
    if (!isIp4(want) && !isIp6(want) && (want === '.' || want === '..' || !IFNAME.test(want))) {
      throw new Error(`--iface ${quoted(want)} is neither an IP address nor an interface name`);
    }
  }
  if (sel.ifaceCanReach !== null && !isIp4(sel.ifaceCanReach)) {
    throw new Error(`--iface-can-reach ${quoted(sel.ifaceCanReach)} is not an IPv4 address`);
  }
}

/** An address `ip -json` reported, checked like any other before it is published or used. */
function kernelIp4(text: string, where: string): string {
  try {
    parseUnicastIp4(text);
  } catch (err) {
    throw new Error(`${where}: ${(err as Error).message}; choose another interface with --iface or set --public-ip`);
  }
  return text;
}

export async function findExternalInterface(sel: IfaceSelection): Promise<ExternalInterface> {
  checkIfaceSelection(sel);
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
    return viaRoute(links, ['route', 'get', sel.ifaceCanReach], sel, `--iface-can-reach: no interface with an IPv4 address routes to ${sel.ifaceCanReach}`);
  }

  return viaRoute(links, ['-4', 'route', 'show', 'default'], sel, 'no default route with an IPv4 address: choose the interface with --iface');
}
