// The iptables rules flanneld installs, as upstream flanneld v0.20.2 does: same chains, same order,
// same match arguments and comments, so a node switched between the two daemons keeps one rule set.
import type { Ip4Net } from '../common/ip4.js';
import type { Ip6Net } from '../common/ip6.js';

/** An IPv4 or IPv6 network: the rule sets are the same for both families (ip6tables for IPv6). */
type Net = Ip4Net | Ip6Net;

export type IptablesTable = 'filter' | 'nat';

export interface IptablesRule {
  table: IptablesTable;
  chain: string;
  /** A jump from a built-in chain is inserted first in it; rules in our own chains are appended in order. */
  position: 'insert' | 'append';
  spec: readonly string[];
}

export const FORWARD_CHAIN = 'FLANNEL-FWD';
export const MASQ_CHAIN = 'FLANNEL-POSTRTG';
export const FORWARD_COMMENT = 'flanneld forward';
export const MASQ_COMMENT = 'flanneld masq';
/** kube-proxy marks packets it will masquerade itself with this bit; masquerading them twice breaks some kernels. */
export const KUBE_PROXY_MARK = '0x4000/0x4000';
const MULTICAST = '224.0.0.0/4';
const MULTICAST_V6 = 'ff00::/8';

/** filter FORWARD: accept everything from or to the flannel network (hosts whose FORWARD policy is DROP, e.g. Docker). */
export function forwardRules(network: Net): IptablesRule[] {
  const n = network.toString();
  const comment = ['-m', 'comment', '--comment', FORWARD_COMMENT];
  return [
    { table: 'filter', chain: 'FORWARD', position: 'insert', spec: [...comment, '-j', FORWARD_CHAIN] },
    { table: 'filter', chain: FORWARD_CHAIN, position: 'append', spec: ['-s', n, ...comment, '-j', 'ACCEPT'] },
    { table: 'filter', chain: FORWARD_CHAIN, position: 'append', spec: ['-d', n, ...comment, '-j', 'ACCEPT'] },
  ];
}

/**
 * nat POSTROUTING: masquerade pod traffic leaving the flannel network, never traffic between pods, and
 * masquerade host traffic into the network except when it is addressed to this node's own subnet.
 */
export function masqRules(network: Net, subnet: Net, randomFully: boolean): IptablesRule[] {
  const n = network.toString();
  const multicast = network.toString().includes(':') ? MULTICAST_V6 : MULTICAST;
  const sn = subnet.toString();
  const comment = ['-m', 'comment', '--comment', MASQ_COMMENT];
  const masquerade = randomFully ? ['-j', 'MASQUERADE', '--random-fully'] : ['-j', 'MASQUERADE'];
  const rule = (spec: string[]): IptablesRule => ({ table: 'nat', chain: MASQ_CHAIN, position: 'append', spec });
  return [
    { table: 'nat', chain: 'POSTROUTING', position: 'insert', spec: [...comment, '-j', MASQ_CHAIN] },
    rule(['-m', 'mark', '--mark', KUBE_PROXY_MARK, ...comment, '-j', 'RETURN']),
    // Pod to pod stays unmasqueraded (source addresses are routable inside the overlay).
    rule(['-s', n, '-d', n, ...comment, '-j', 'RETURN']),
    // Pod to the outside world, except multicast.
    rule(['-s', n, '!', '-d', multicast, ...comment, ...masquerade]),
    // Outside traffic arriving for this node's own pods keeps its source.
    rule(['!', '-s', n, '-d', sn, ...comment, '-j', 'RETURN']),
    // The host reaching pods on other nodes: replies must come back through the overlay.
    rule(['!', '-s', n, '-d', n, ...comment, ...masquerade]),
  ];
}

/** The chains of ours a rule set uses (created if missing, emptied and refilled on repair). */
export function ownChains(rules: readonly IptablesRule[]): { table: IptablesTable; chain: string }[] {
  const seen = new Map<string, { table: IptablesTable; chain: string }>();
  for (const r of rules) {
    if (r.position === 'append') seen.set(`${r.table}/${r.chain}`, { table: r.table, chain: r.chain });
  }
  return [...seen.values()];
}

/** One rule as an `iptables-restore` line; words with spaces are double-quoted as iptables-save prints them. */
export function restoreLine(action: '-A' | '-I' | '-D', rule: IptablesRule): string {
  const words = rule.spec.map((w) => {
    if (/["\\\n]/.test(w)) throw new Error(`refusing to pass ${JSON.stringify(w)} to iptables-restore`);
    return /\s/.test(w) || w === '' ? `"${w}"` : w;
  });
  const head = action === '-I' ? ['-I', rule.chain, '1'] : [action, rule.chain];
  return [...head, ...words].join(' ');
}
