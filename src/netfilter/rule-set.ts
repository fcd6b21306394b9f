// What the node's netfilter rules are made of, whichever front end writes them: per address family the
// flannel network and this node's subnet, and whether to masquerade (--ip-masq) and to accept forwarded
// traffic (--iptables-forward-rules). Two writers turn it into kernel state, iptables and nftables, each
// with upstream flanneld v0.28.9's own listing.
import type { Ip4Net } from '../common/ip4.js';
import type { Ip6Net } from '../common/ip6.js';

export type NetfilterMode = 'iptables' | 'nftables';
export type Family = 4 | 6;

export interface FamilyRules {
  family: Family;
  /** The whole flannel network of this family. */
  network: Ip4Net | Ip6Net;
  /** This node's leased subnet in it. */
  subnet: Ip4Net | Ip6Net;
}

export interface WantedRules {
  masq: boolean;
  forward: boolean;
  /** --ip-masq-fully-random-disable: plain MASQUERADE even where fully random port mapping is supported. */
  randomFullyDisable: boolean;
  /** The families this node has a lease in; a family left out has none of our rules. */
  families: FamilyRules[];
}

/** Multicast is never masqueraded (upstream excludes it the same way). */
export const MULTICAST: Readonly<Record<Family, string>> = { 4: '224.0.0.0/4', 6: 'ff00::/8' };

/** kube-proxy marks what it masquerades itself with this bit; masquerading it twice breaks some kernels. */
export const KUBE_PROXY_MARK = 0x4000;

/** One front end's rules in the kernel. */
export interface RuleWriter {
  readonly mode: NetfilterMode;
  /**
   * What the kernel holds of ours for `want`'s families, as text that is equal between two reads
   * exactly when nothing of ours changed in between.
   */
  snapshot(want: WantedRules): Promise<string>;
  /** Replaces all of ours with `want`: one transaction per table set, so no packet sees half of it. */
  apply(want: WantedRules): Promise<void>;
  /** Removes every rule, chain and table of this front end, in both families; true when there was any. */
  remove(): Promise<boolean>;
}

/**
 * A CIDR as it goes into a restore file or an nft script: our own formatting of a parsed network,
 * checked again here so that no word could ever carry anything else.
 */
export function cidrWord(net: Ip4Net | Ip6Net): string {
  const text = net.toString();
  if (!/^[0-9a-f.:]+\/\d{1,3}$/.test(text)) throw new Error(`refusing ${JSON.stringify(text)} as a netfilter address`);
  return text;
}
