// What upstream flanneld v0.28.9's e2e script (e2e/run-e2e-tests.sh: check_iptables, check_nftables)
// reads from a node and expects there, with our network and lease in place of its 10.42.0.0/16 and pod
// CIDR: the listings are read with the same commands and written out in the same order.
import { run } from '../../testbed/netns.js';

/** `iptables -t nat -S POSTROUTING | grep FLANNEL` and `iptables -t nat -S FLANNEL-POSTRTG`, as check_iptables reads them. */
export async function natListing(ns: string, bin: 'iptables' | 'ip6tables'): Promise<string> {
  const jump = (await run([bin, '-w', '5', '-t', 'nat', '-S', 'POSTROUTING'], { netns: ns })).stdout.split('\n').filter((l) => l.includes('FLANNEL'));
  const chain = await run([bin, '-w', '5', '-t', 'nat', '-S', 'FLANNEL-POSTRTG'], { netns: ns, allowFail: true });
  return [...jump, ...(chain.code === 0 ? chain.stdout.trimEnd().split('\n') : [])].join('\n');
}

/** `iptables -t filter -S FORWARD` and `iptables -t filter -S FLANNEL-FWD`, as check_iptables reads them. */
export async function forwardListing(ns: string, bin: 'iptables' | 'ip6tables'): Promise<string> {
  const builtin = (await run([bin, '-w', '5', '-t', 'filter', '-S', 'FORWARD'], { netns: ns })).stdout.trimEnd();
  const chain = await run([bin, '-w', '5', '-t', 'filter', '-S', 'FLANNEL-FWD'], { netns: ns, allowFail: true });
  return chain.code === 0 ? `${builtin}\n${chain.stdout.trimEnd()}` : builtin;
}

/** `nft list chain <family> <table> <chain>`; empty when there is no such chain (check_nftables_removed). */
export async function nftChain(ns: string, family: 'ip' | 'ip6', chain: string): Promise<string> {
  const table = family === 'ip' ? 'flannel-ipv4' : 'flannel-ipv6';
  const r = await run(['nft', 'list', 'chain', family, table, chain], { netns: ns, allowFail: true });
  return r.code === 0 ? r.stdout.trimEnd() : '';
}

// Upstream's expected listings (check_iptables), our network and lease in place of 10.42.0.0/16 and the pod CIDR.
export function expectedNat(network: string, podCidr: string, multicast: string, masquerade = 'MASQUERADE --random-fully'): string {
  return `-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-N FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s ${podCidr} -d ${network} -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s ${network} -d ${podCidr} -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s ${network} -d ${podCidr} -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s ${network} ! -d ${multicast} -m comment --comment "flanneld masq" -j ${masquerade}
-A FLANNEL-POSTRTG ! -s ${network} -d ${network} -m comment --comment "flanneld masq" -j ${masquerade}`;
}

/** Upstream's FORWARD listing has kube-proxy's rules before flannel's jump; `otherRules` stand for them (or none). */
export function expectedForward(network: string, otherRules: string[] = []): string {
  return `${['-P FORWARD ACCEPT', ...otherRules].join('\n')}
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-N FLANNEL-FWD
-A FLANNEL-FWD -s ${network} -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d ${network} -m comment --comment "flanneld forward" -j ACCEPT`;
}

// Upstream's expected listings (check_nftables), written the same way.
export function expectedPostrtg(family: 'ip' | 'ip6', network: string, podCidr: string, multicast: string, masquerade = 'masquerade fully-random'): string {
  const table = family === 'ip' ? 'flannel-ipv4' : 'flannel-ipv6';
  return `table ${family} ${table} {
	chain postrtg {
		comment "chain to manage traffic masquerading by flannel"
		type nat hook postrouting priority srcnat; policy accept;
		meta mark 0x00004000 return
		${family} saddr ${podCidr} ${family} daddr ${network} return
		${family} saddr ${network} ${family} daddr ${podCidr} return
		${family} saddr != ${podCidr} ${family} daddr ${network} return
		${family} saddr ${network} ${family} daddr != ${multicast} ${masquerade}
		${family} saddr != ${network} ${family} daddr ${network} ${masquerade}
	}
}`;
}

export function expectedNftForward(family: 'ip' | 'ip6', network: string): string {
  const table = family === 'ip' ? 'flannel-ipv4' : 'flannel-ipv6';
  return `table ${family} ${table} {
	chain forward {
		comment "chain to accept flannel traffic"
		type filter hook forward priority filter; policy accept;
		${family} saddr ${network} accept
		${family} daddr ${network} accept
	}
}`;
}

