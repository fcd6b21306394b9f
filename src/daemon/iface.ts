// Chooses the underlay interface the way upstream flanneld does: --iface (names or IPs, first usable
// wins), then --iface-regex, then --iface-can-reach, else the interface of the default route. Each
// address family gets its own address on that interface: IPv4 for the lease's PublicIP, and (dual stack)
// IPv6 for its PublicIPv6. --iface-regex and --iface-can-reach take IPv6 addresses too (upstream's only
// look at one family), and an address the kernel marks temporary (privacy extensions: it goes away within
// hours), deprecated (its preferred lifetime is over) or failed duplicate address detection is never
// chosen, where upstream only skips deprecated ones.
import type { ExternalInterface } from '../backend/backend.js';
import { ipJson, type IpOptions } from '../routes/ip.js';
import { quoted } from '../common/printable.js';
import { isIp4, parseUnicastIp4 } from '../common/ip4.js';
import { formatIp6, isIp6, parseIp6 } from '../common/ip6.js';
import { parseUnicastIp6 } from '../subnet/lease-validation.js';

interface IpAddr {
  family: string;
  local: string;
  prefixlen: number;
  scope?: string;
  temporary?: boolean;
  deprecated?: boolean;
  dadfailed?: boolean;
  /** Configured by SLAAC or DHCPv6 rather than by hand. */
  dynamic?: boolean;
}

interface IpAddrLink {
  ifname: string;
  mtu: number;
  flags?: string[];
  addr_info?: IpAddr[];
}

export interface IfaceSelection {
  iface: string[];
  ifaceRegex: string[];
  ifaceCanReach: string | null;
  publicIP: string | null;
  /** --public-ipv6: the IPv6 address other nodes send to (default: the interface's chosen IPv6 address). */
  publicIPv6?: string | null;
}

/** The link's IPv4 addresses that may be chosen, in the kernel's order (primary first). */
function usableIp4s(link: IpAddrLink): string[] {
  return (link.addr_info ?? []).filter((a) => a.family === 'inet' && !a.deprecated).map((a) => a.local);
}

/**
 * The link's IPv6 addresses that may be chosen: global scope (a link-local address cannot be a peer's next
 * hop across nodes), none temporary, deprecated or failed; those configured by hand before SLAAC's.
 */
function usableIp6s(link: IpAddrLink): string[] {
  const usable = (link.addr_info ?? []).filter(
    (a) => a.family === 'inet6' && (a.scope === undefined || a.scope === 'global') && !a.temporary && !a.deprecated && !a.dadfailed,
  );
  return [...usable.filter((a) => !a.dynamic), ...usable.filter((a) => a.dynamic)].map((a) => a.local);
}

/** `ip` prints IPv6 addresses canonically, but a flag may not: compare them as numbers. */
const sameIp6 = (a: string, b: string): boolean => isIp6(a) && isIp6(b) && parseIp6(a) === parseIp6(b);

/** The chosen link with its IPv4 address, and the IPv6 address when a rule chose one (else its first usable). */
function toExternal(link: IpAddrLink, ip: string, sel: IfaceSelection, ip6?: string): ExternalInterface {
  // Without --public-ip the interface's address is published: it must be a node address too.
  const ifaceIP = sel.publicIP === null ? kernelIp4(ip, `interface ${link.ifname}'s address`) : ip;
  const ifaceIPv6 = ip6 ?? usableIp6s(link)[0] ?? null;
  const v6 = sel.publicIPv6 ?? ifaceIPv6;
  return { name: link.ifname, ifaceIP, publicIP: sel.publicIP ?? ifaceIP, mtu: link.mtu, ifaceIPv6, publicIPv6: v6 === null ? null : formatIp6(parseIp6(v6)) };
}

/**
 * The interface of the first route `ip <routeArgs>` prints, with the route's source address where it is
 * one we may choose (for an IPv6 route, the kernel may prefer a temporary source: that one is passed over).
 */
async function viaRoute(links: IpAddrLink[], routeArgs: string[], sel: IfaceSelection, notFound: string, opts: IpOptions): Promise<ExternalInterface> {
  const [route] = await ipJson<{ dev: string; prefsrc?: string }>(routeArgs, opts);
  const link = route && links.find((l) => l.ifname === route.dev);
  if (!link) throw new Error(notFound);
  const src = route.prefsrc;
  const ip4 = src !== undefined && usableIp4s(link).includes(src) ? src : usableIp4s(link)[0];
  const ip6 = src !== undefined ? usableIp6s(link).find((a) => sameIp6(a, src)) : undefined;
  if (!ip4) throw new Error(notFound);
  return toExternal(link, ip4, sel, ip6);
}

/**
 * A Linux interface name: 1-15 bytes, none of them a space, '/', ':' or a control character (what
 * the kernel's dev_valid_name() allows, minus ':' which only old alias names use).
 */
const IFNAME = /^[\x21-\x2e\x30-\x39\x3b-\x7e]{1,15}$/;

/**
 * Checks our own inputs with the same parser as leases: --public-ip must be a canonical, unicast IPv4
 * address, each --iface an IP address or a valid interface name, --iface-can-reach an IP address. A
 * padded value ("10.0.0.5 ") is an error naming the flag, never a lease that breaks every peer's
 * `bridge -batch`.
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
  if (sel.ifaceCanReach !== null && !isIp4(sel.ifaceCanReach) && !isIp6(sel.ifaceCanReach)) {
    throw new Error(`--iface-can-reach ${quoted(sel.ifaceCanReach)} is not an IP address (IPv4 or IPv6)`);
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

/** `opts.netns` looks in that named network namespace instead of ours (tests). */
export async function findExternalInterface(sel: IfaceSelection, opts: IpOptions = {}): Promise<ExternalInterface> {
  checkIfaceSelection(sel);
  const links = await ipJson<IpAddrLink>(['addr', 'show'], opts);

  if (sel.iface.length > 0) {
    for (const want of sel.iface) {
      if (isIp6(want)) {
        // An interface named by its IPv6 address: that link, that IPv6 address, and the link's IPv4 address.
        const link = links.find((l) => l.addr_info?.some((a) => a.family === 'inet6' && sameIp6(a.local, want)));
        const ip = link && usableIp4s(link)[0];
        if (link && ip) return toExternal(link, ip, sel, formatIp6(parseIp6(want)));
        continue;
      }
      const byIp = isIp4(want);
      const link = links.find((l) => (byIp ? l.addr_info?.some((a) => a.family === 'inet' && a.local === want) : l.ifname === want));
      const ip = link && (byIp ? want : usableIp4s(link)[0]);
      if (link && ip) return toExternal(link, ip, sel);
    }
    throw new Error(`--iface: none of ${sel.iface.join(', ')} is an interface with an IPv4 address`);
  }

  if (sel.ifaceRegex.length > 0) {
    // As upstream: for each pattern, the interfaces' addresses first, then their names.
    const withIp4 = links.filter((l) => usableIp4s(l).length > 0);
    for (const pattern of sel.ifaceRegex) {
      const re = new RegExp(pattern);
      for (const link of withIp4) {
        const ip4 = usableIp4s(link).find((a) => re.test(a));
        if (ip4) return toExternal(link, ip4, sel);
        const ip6 = usableIp6s(link).find((a) => re.test(a));
        if (ip6) return toExternal(link, usableIp4s(link)[0]!, sel, ip6);
      }
      const named = withIp4.find((l) => re.test(l.ifname));
      if (named) return toExternal(named, usableIp4s(named)[0]!, sel);
    }
    throw new Error(`--iface-regex: no interface with an IPv4 address matches ${sel.ifaceRegex.join(', ')} by name or address`);
  }

  if (sel.ifaceCanReach !== null) {
    const family = isIp6(sel.ifaceCanReach) ? '-6' : '-4';
    return viaRoute(links, [family, 'route', 'get', sel.ifaceCanReach], sel, `--iface-can-reach: no interface with an IPv4 address routes to ${sel.ifaceCanReach}`, opts);
  }

  return viaRoute(links, ['-4', 'route', 'show', 'default'], sel, 'no default route with an IPv4 address: choose the interface with --iface', opts);
}
