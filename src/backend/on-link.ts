// Whether a peer's underlay address is on a link of ours — inside a prefix of an address on the
// underlay interface, or reached without a gateway — for both families. host-gw can route only to
// peers on the underlay's link, and vxlan's DirectRouting sends to such peers unencapsulated.
import { Ip4Net } from '../common/ip4.js';
import { Ip6Net } from '../common/ip6.js';
import { readAddrs } from '../routes/addr.js';
import { type IpAddr, type IpNet, formatIp, hostNet, netInside } from '../routes/entries.js';
import type { IpOptions } from '../routes/ip.js';
import { routeGet } from '../routes/route.js';

/** On link through `dev`, or why not. */
export type OnLinkVerdict = { dev: string } | { why: string };

export class OnLinkCheck {
  private prefixes: IpNet[] = [];

  constructor(
    /** The underlay interface. */
    private readonly dev: string,
    private readonly ipOpts: IpOptions,
  ) {}

  /** Reads the underlay's prefixes (at start, and again when skipped peers are looked at again). */
  async refresh(): Promise<void> {
    const addrs = await readAddrs(this.dev, this.ipOpts);
    this.prefixes = addrs
      .filter((a) => a.scope === 'global')
      .map((a) => (typeof a.ip === 'bigint' ? new Ip6Net(a.ip, a.prefixLen) : new Ip4Net(a.ip, a.prefixLen)));
  }

  /** Where `ip` is directly reachable: the underlay when inside one of its prefixes, else whatever device the kernel routes it through without a gateway. */
  async check(ip: IpAddr): Promise<OnLinkVerdict> {
    const host = hostNet(ip);
    if (this.prefixes.some((p) => netInside(host, p))) return { dev: this.dev };
    const text = formatIp(ip);
    const lookup = await routeGet(ip, this.ipOpts);
    if (!lookup) return { why: `${text} is unreachable` };
    if (lookup.gateway !== null) return { why: `${text} is reached through the gateway ${formatIp(lookup.gateway)} on ${lookup.dev}` };
    return { dev: lookup.dev };
  }
}
