// The netfilter rule sets as data, no root: upstream v0.28.9's iptables rules rendered into the
// iptables-restore transaction (fresh, over an older flanneld's chains, and removal), its nftables script,
// the JSON read-back, and the br_netfilter check. test/netfilter.test.ts checks all of it against the kernel.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Ip4Net } from '../src/common/ip4.js';
import { Ip6Net } from '../src/common/ip6.js';
import { checkBrNetfilter } from '../src/netfilter/br-netfilter.js';
import { masqRules, restoreInput, ruleLine } from '../src/netfilter/iptables.js';
import { nftScript, withoutHandles } from '../src/netfilter/nftables.js';
import type { FamilyRules, WantedRules } from '../src/netfilter/rule-set.js';
import { NetfilterToolError, runTool } from '../src/netfilter/runner.js';

const v4: FamilyRules = { family: 4, network: Ip4Net.parse('198.19.0.0/16'), subnet: Ip4Net.parse('198.19.46.0/24') };
const v6: FamilyRules = { family: 6, network: Ip6Net.parse('2001:2:1::/48'), subnet: Ip6Net.parse('2001:2:1:2e::/64') };
const none = { jumps: [], chain: null };

describe('the iptables transaction', () => {
  it('on a fresh node: declares our chains, appends the jumps, then the rules in upstream order', () => {
    const input = restoreInput([
      { set: 'masq', state: none, want: v4, randomFully: true },
      { set: 'forward', state: none, want: v4, randomFully: true },
    ]);
    expect(input.split('\n')).toEqual([
      '*nat',
      ':FLANNEL-POSTRTG - [0:0]',
      '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
      '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
      '-A FLANNEL-POSTRTG -s 198.19.46.0/24 -d 198.19.0.0/16 -m comment --comment "flanneld masq" -j RETURN',
      '-A FLANNEL-POSTRTG -s 198.19.0.0/16 -d 198.19.46.0/24 -m comment --comment "flanneld masq" -j RETURN',
      '-A FLANNEL-POSTRTG ! -s 198.19.0.0/16 -d 198.19.46.0/24 -m comment --comment "flanneld masq" -j RETURN',
      '-A FLANNEL-POSTRTG -s 198.19.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
      '-A FLANNEL-POSTRTG ! -s 198.19.0.0/16 -d 198.19.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
      'COMMIT',
      '*filter',
      ':FLANNEL-FWD - [0:0]',
      '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
      '-A FLANNEL-FWD -s 198.19.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
      '-A FLANNEL-FWD -d 198.19.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
      'COMMIT',
      '',
    ]);
  });

  it('over an older run: every listed jump is deleted before ours is appended; the declaration empties the chain', () => {
    const jump = '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG';
    const input = restoreInput([
      { set: 'masq', state: { jumps: [jump, jump], chain: ['-N FLANNEL-POSTRTG', '-A FLANNEL-POSTRTG -s 198.19.0.0/16 -d 198.19.0.0/16 -j RETURN'] }, want: v4, randomFully: false },
    ]);
    const lines = input.split('\n');
    expect(lines.slice(0, 5)).toEqual([
      '*nat',
      ':FLANNEL-POSTRTG - [0:0]',
      '-D POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
      '-D POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
      jump,
    ]);
    expect(input).not.toContain('--random-fully');
    expect(lines.filter((l) => l.startsWith('-A FLANNEL-POSTRTG'))).toHaveLength(6);
  });

  it('for a rule set no longer wanted: its jumps deleted, its chain flushed and removed; nothing at all when there is none', () => {
    const state = { jumps: ['-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD'], chain: ['-N FLANNEL-FWD'] };
    expect(restoreInput([{ set: 'forward', state, want: null, randomFully: false }])).toBe(
      '*filter\n-D FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD\n-F FLANNEL-FWD\n-X FLANNEL-FWD\nCOMMIT\n',
    );
    expect(restoreInput([{ set: 'forward', state: none, want: null, randomFully: false }, { set: 'masq', state: none, want: null, randomFully: false }])).toBe('');
  });

  it('IPv6: the same rules over the IPv6 network, IPv6 multicast excluded', () => {
    expect(masqRules(v6, true).map((r) => ruleLine('FLANNEL-POSTRTG', r))).toEqual([
      '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN',
      '-A FLANNEL-POSTRTG -s 2001:2:1:2e::/64 -d 2001:2:1::/48 -m comment --comment "flanneld masq" -j RETURN',
      '-A FLANNEL-POSTRTG -s 2001:2:1::/48 -d 2001:2:1:2e::/64 -m comment --comment "flanneld masq" -j RETURN',
      '-A FLANNEL-POSTRTG ! -s 2001:2:1::/48 -d 2001:2:1:2e::/64 -m comment --comment "flanneld masq" -j RETURN',
      '-A FLANNEL-POSTRTG -s 2001:2:1::/48 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
      '-A FLANNEL-POSTRTG ! -s 2001:2:1::/48 -d 2001:2:1::/48 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
    ]);
  });

  it('refuses a word that could end a restore line early', () => {
    expect(() => ruleLine('FLANNEL-POSTRTG', ['-s', 'x"\nCOMMIT'])).toThrow(/refusing/);
  });
});

describe('the nftables script', () => {
  const want = (families: FamilyRules[], over: Partial<WantedRules> = {}): WantedRules => ({ masq: true, forward: true, randomFullyDisable: false, families, ...over });

  it("re-creates both of upstream's tables in one script; a family without a lease gets an empty table", () => {
    expect(nftScript(want([v4]), true).split('\n')).toEqual([
      'add table ip flannel-ipv4',
      'delete table ip flannel-ipv4',
      'add table ip flannel-ipv4 { comment "rules for flannel-ipv4" ; }',
      'add chain ip flannel-ipv4 postrtg { type nat hook postrouting priority srcnat ; policy accept ; comment "chain to manage traffic masquerading by flannel" ; }',
      'add rule ip flannel-ipv4 postrtg meta mark 0x4000 return',
      'add rule ip flannel-ipv4 postrtg ip saddr 198.19.46.0/24 ip daddr 198.19.0.0/16 return',
      'add rule ip flannel-ipv4 postrtg ip saddr 198.19.0.0/16 ip daddr 198.19.46.0/24 return',
      'add rule ip flannel-ipv4 postrtg ip saddr != 198.19.46.0/24 ip daddr 198.19.0.0/16 return',
      'add rule ip flannel-ipv4 postrtg ip saddr 198.19.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random',
      'add rule ip flannel-ipv4 postrtg ip saddr != 198.19.0.0/16 ip daddr 198.19.0.0/16 masquerade fully-random',
      'add chain ip flannel-ipv4 forward { type filter hook forward priority filter ; policy accept ; comment "chain to accept flannel traffic" ; }',
      'add rule ip flannel-ipv4 forward ip saddr 198.19.0.0/16 accept',
      'add rule ip flannel-ipv4 forward ip daddr 198.19.0.0/16 accept',
      'add table ip6 flannel-ipv6',
      'delete table ip6 flannel-ipv6',
      'add table ip6 flannel-ipv6 { comment "rules for flannel-ipv6" ; }',
      '',
    ]);
  });

  it('IPv6 rules use ip6 matches and ff00::/8; without fully random support or with it disabled, plain masquerade', () => {
    const script = nftScript(want([v4, v6], { forward: false }), false);
    expect(script).toContain('add rule ip6 flannel-ipv6 postrtg ip6 saddr 2001:2:1::/48 ip6 daddr != ff00::/8 masquerade\n');
    expect(script).toContain('add rule ip6 flannel-ipv6 postrtg ip6 saddr != 2001:2:1:2e::/64 ip6 daddr 2001:2:1::/48 return\n');
    expect(script).not.toContain('fully-random');
    expect(script).not.toContain('forward');
  });

  it('reads a JSON listing without handles and metainfo, so two reads of unchanged tables compare equal', () => {
    const listing = (handle: number) => JSON.stringify({
      nftables: [
        { metainfo: { version: '1.0.6', json_schema_version: 1 } },
        { table: { family: 'ip', name: 'flannel-ipv4', handle } },
        { rule: { family: 'ip', table: 'flannel-ipv4', chain: 'postrtg', handle: handle + 1, expr: [{ return: null }] } },
      ],
    });
    expect(withoutHandles(listing(1))).toBe(withoutHandles(listing(7)));
    expect(withoutHandles(listing(1))).toBe('[{"table":{"family":"ip","name":"flannel-ipv4"}},{"rule":{"family":"ip","table":"flannel-ipv4","chain":"postrtg","expr":[{"return":null}]}}]');
  });
});

describe('the br_netfilter check', () => {
  const root = mkdtempSync(join(tmpdir(), 'flannel-proc-'));
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('says what to do when the module is missing, for each family it needs', () => {
    expect(() => checkBrNetfilter([4], root)).toThrow(/br_netfilter kernel module is not loaded .*bridge-nf-call-iptables does not exist.*modprobe br_netfilter.*EnableNFTables/);
    mkdirSync(join(root, 'sys/net/bridge'), { recursive: true });
    writeFileSync(join(root, 'sys/net/bridge/bridge-nf-call-iptables'), '1\n');
    expect(() => checkBrNetfilter([4], root)).not.toThrow();
    expect(() => checkBrNetfilter([4, 6], root)).toThrow(/bridge-nf-call-ip6tables does not exist/);
  });
});

describe('the tools', () => {
  it('are killed past their deadline, and the pass that ran them fails with a message saying so', async () => {
    const started = Date.now();
    const err = await runTool(['sleep', '10'], { timeoutMs: 200 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NetfilterToolError);
    expect((err as Error).message).toBe('sleep 10 failed: no answer within 200 ms; killed');
    expect(Date.now() - started).toBeLessThan(5000);
    await expect(runTool(['/nonexistent/iptables', '-S'])).rejects.toThrow(/cannot run \/nonexistent\/iptables/);
  });
});
