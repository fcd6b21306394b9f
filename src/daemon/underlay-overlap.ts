// A Network (or IPv6Network) must not contain this node's own underlay addresses or the addresses of
// its etcd endpoints: the node would route them into the overlay (the Network route through the
// backend's device, the pods' route through cni0), cutting itself off from its peers or from etcd.
// Upstream accepts such a config and the node then fails in confusing ways; here it is an invalid
// config, named with both sides, and the daemon waits for a fixed one like for any other.
import { lookup } from 'node:dns/promises';
import type { ExternalInterface } from '../backend/backend.js';
import { isIp4, parseIp4 } from '../common/ip4.js';
import { isIp6, parseIp6 } from '../common/ip6.js';
import { ConfigError, type NetworkConfig } from '../subnet/config.js';

/** An address the node needs to reach outside the overlay, and what it is (for the error). */
export interface UnderlayAddress {
  ip: string;
  /** E.g. "this node's underlay address (eth0)" or "etcd endpoint https://etcd-1:2379". */
  what: string;
}

/** How long an etcd endpoint's name may take to resolve for this check (it is skipped past that). */
const RESOLVE_TIMEOUT_MS = 2_000;

/** The host of an etcd endpoint URL (brackets of an IPv6 literal removed); null if it is not a URL. */
export function endpointHost(endpoint: string): string | null {
  let url: URL;
  try {
    url = new URL(endpoint.includes('://') ? endpoint : `http://${endpoint}`);
  } catch {
    return null;
  }
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  return host === '' ? null : host;
}

/**
 * The node's underlay addresses (interface and public, both families) and every etcd endpoint's
 * addresses. Endpoints given by name are resolved, each within a short deadline; a name that does
 * not resolve is left out (etcd's client reports it).
 */
export async function underlayAddresses(iface: ExternalInterface, endpoints: readonly string[]): Promise<UnderlayAddress[]> {
  const own = `this node's underlay address (${iface.name})`;
  const out: UnderlayAddress[] = [];
  const add = (ip: string | null | undefined, what: string): void => {
    if (ip && !out.some((a) => a.ip === ip)) out.push({ ip, what });
  };
  add(iface.ifaceIP, own);
  add(iface.publicIP, iface.publicIP === iface.ifaceIP ? own : "this node's public address (--public-ip)");
  add(iface.ifaceIPv6, own);
  add(iface.publicIPv6, iface.publicIPv6 === iface.ifaceIPv6 ? own : "this node's public IPv6 address (--public-ipv6)");
  for (const endpoint of endpoints) {
    const host = endpointHost(endpoint);
    if (host === null) continue;
    const what = `etcd endpoint ${endpoint}`;
    if (isIp4(host) || isIp6(host)) {
      add(host, what);
      continue;
    }
    for (const ip of await resolve(host)) add(ip, what);
  }
  return out;
}

async function resolve(host: string): Promise<string[]> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<string[]>((resolve) => (timer = setTimeout(() => resolve([]), RESOLVE_TIMEOUT_MS)));
  try {
    const found = lookup(host, { all: true }).then(
      (addrs) => addrs.map((a) => a.address),
      () => [],
    );
    return await Promise.race([found, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** Throws a ConfigError (field Network or IPv6Network) when a network contains one of `addresses`. */
export function checkUnderlayOutsideNetwork(config: NetworkConfig, addresses: readonly UnderlayAddress[]): void {
  for (const a of addresses) {
    if (isIp4(a.ip) && config.network.contains(parseIp4(a.ip))) {
      throw new ConfigError('Network', overlapReason(config.network.toString(), a));
    }
    if (config.ipv6 && isIp6(a.ip) && config.ipv6.network.contains(parseIp6(a.ip))) {
      throw new ConfigError('IPv6Network', overlapReason(config.ipv6.network.toString(), a));
    }
  }
}

function overlapReason(network: string, a: UnderlayAddress): string {
  return `${network} contains ${a.ip}, ${a.what}: the node would route it into the overlay; choose a network that leaves the underlay and etcd outside`;
}
