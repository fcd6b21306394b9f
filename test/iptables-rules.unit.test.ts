// The iptables rule sets as data: upstream v0.20.2's rules, in upstream's order, rendered for
// iptables-restore. No root: test/iptables.test.ts checks them against the kernel.
import { describe, expect, it } from 'vitest';
import { FORWARD_CHAIN, MASQ_CHAIN, forwardRules, masqRules, ownChains, restoreLine } from '../src/iptables/rules.js';
import { Ip4Net } from '../src/common/ip4.js';

const network = Ip4Net.parse('198.19.0.0/16');
const subnet = Ip4Net.parse('198.19.46.0/24');
const lines = (rules: ReturnType<typeof masqRules>) => rules.map((r) => `${r.table} ${restoreLine(r.position === 'insert' ? '-I' : '-A', r)}`);

describe('iptables rule sets', () => {
  it('forward rules: one jump from FORWARD, then accept from and to the network', () => {
    expect(lines(forwardRules(network))).toEqual([
      'filter -I FORWARD 1 -m comment --comment "flanneld forward" -j FLANNEL-FWD',
      'filter -A FLANNEL-FWD -s 198.19.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
      'filter -A FLANNEL-FWD -d 198.19.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
    ]);
  });

  it('masquerade rules: kube-proxy marks and pod-to-pod return first, then masquerade out, keep our subnet, masquerade host-to-pod', () => {
    expect(lines(masqRules(network, subnet, true))).toEqual([
      'nat -I POSTROUTING 1 -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
      'nat -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
      'nat -A FLANNEL-POSTRTG -s 198.19.0.0/16 -d 198.19.0.0/16 -m comment --comment "flanneld masq" -j RETURN',
      'nat -A FLANNEL-POSTRTG -s 198.19.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
      'nat -A FLANNEL-POSTRTG ! -s 198.19.0.0/16 -d 198.19.46.0/24 -m comment --comment "flanneld masq" -j RETURN',
      'nat -A FLANNEL-POSTRTG ! -s 198.19.0.0/16 -d 198.19.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
    ]);
    // Without --random-fully support the same rules, plain MASQUERADE.
    expect(lines(masqRules(network, subnet, false)).filter((l) => l.includes('random-fully'))).toEqual([]);
  });

  it('names each chain of ours once, and refuses words that could break a restore file', () => {
    expect(ownChains([...forwardRules(network), ...masqRules(network, subnet, false)])).toEqual([
      { table: 'filter', chain: FORWARD_CHAIN },
      { table: 'nat', chain: MASQ_CHAIN },
    ]);
    expect(() => restoreLine('-A', { table: 'nat', chain: MASQ_CHAIN, position: 'append', spec: ['-s', 'x"\nCOMMIT'] })).toThrow(/refusing/);
  });
});
