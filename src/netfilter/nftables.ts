// The nftables writer: upstream flanneld v0.28.9's tables `ip flannel-ipv4` and `ip6 flannel-ipv6`, each
// with a `postrtg` chain (nat, postrouting, srcnat) and a `forward` chain (filter, forward, filter).
// The tables are wholly ours, so an apply is one `nft -f` transaction that deletes and re-creates both
// tables with exactly the wanted chains and rules: nothing of an earlier subnet, or anything someone
// added to our tables, survives it, and no packet ever sees a half-written table.
//
// Driven through the `nft` command rather than netlink: nft compiles rules to the kernel's bytecode
// (which we would otherwise have to encode ourselves) and commits a whole script as one transaction.
// The script is written in nft's own syntax — nft 1.0.6 (Debian 12) reads no table or chain comments
// from JSON input, and upstream's chains carry comments — and contains nothing but fixed words and our
// own formatting of parsed networks. What the kernel holds is read back as JSON (`nft -j`), so no text
// listing is parsed.
import { KUBE_PROXY_MARK, MULTICAST, cidrWord, type Family, type FamilyRules, type RuleWriter, type WantedRules } from './rule-set.js';
import { NetfilterToolError, mustRun, runTool } from './runner.js';

export const NFT_TABLES: Readonly<Record<Family, { family: 'ip' | 'ip6'; name: string }>> = {
  4: { family: 'ip', name: 'flannel-ipv4' },
  6: { family: 'ip6', name: 'flannel-ipv6' },
};
export const POSTRTG_CHAIN = 'postrtg';
export const FORWARD_CHAIN = 'forward';

/** The postrtg chain's rules in upstream's order and words (its fourth rule differs from iptables' on purpose upstream). */
export function masqRules(f: FamilyRules, randomFully: boolean): string[] {
  const p = NFT_TABLES[f.family].family;
  const n = cidrWord(f.network);
  const sn = cidrWord(f.subnet);
  const masquerade = randomFully ? 'masquerade fully-random' : 'masquerade';
  return [
    `meta mark 0x${KUBE_PROXY_MARK.toString(16)} return`,
    `${p} saddr ${sn} ${p} daddr ${n} return`,
    `${p} saddr ${n} ${p} daddr ${sn} return`,
    `${p} saddr != ${sn} ${p} daddr ${n} return`,
    `${p} saddr ${n} ${p} daddr != ${MULTICAST[f.family]} ${masquerade}`,
    `${p} saddr != ${n} ${p} daddr ${n} ${masquerade}`,
  ];
}

export function forwardRules(f: FamilyRules): string[] {
  const p = NFT_TABLES[f.family].family;
  const n = cidrWord(f.network);
  return [`${p} saddr ${n} accept`, `${p} daddr ${n} accept`];
}

const tableRef = (family: Family): string => `${NFT_TABLES[family].family} ${NFT_TABLES[family].name}`;

/** The script that replaces both tables with `want` (both exist, as upstream creates them; a family without a lease stays empty). */
export function nftScript(want: WantedRules, randomFully: boolean): string {
  const out: string[] = [];
  for (const family of [4, 6] as const) {
    const ref = tableRef(family);
    // `add` first so that `delete` never fails on a missing table; all of it is one transaction.
    out.push(`add table ${ref}`, `delete table ${ref}`, `add table ${ref} { comment "rules for ${NFT_TABLES[family].name}" ; }`);
    const f = want.families.find((x) => x.family === family);
    if (!f) continue;
    if (want.masq) {
      out.push(`add chain ${ref} ${POSTRTG_CHAIN} { type nat hook postrouting priority srcnat ; policy accept ; comment "chain to manage traffic masquerading by flannel" ; }`);
      for (const rule of masqRules(f, randomFully)) out.push(`add rule ${ref} ${POSTRTG_CHAIN} ${rule}`);
    }
    if (want.forward) {
      out.push(`add chain ${ref} ${FORWARD_CHAIN} { type filter hook forward priority filter ; policy accept ; comment "chain to accept flannel traffic" ; }`);
      for (const rule of forwardRules(f)) out.push(`add rule ${ref} ${FORWARD_CHAIN} ${rule}`);
    }
  }
  return out.join('\n') + '\n';
}

/** The kernel's answer to "is there such a table", as nft words it. */
const NO_SUCH_TABLE = /No such file or directory/;

/** A JSON listing without what changes on every rewrite (handles) or says nothing of the rules (metainfo). */
export function withoutHandles(json: string): string {
  const doc = JSON.parse(json) as { nftables?: Record<string, Record<string, unknown>>[] };
  const items = (doc.nftables ?? []).filter((item) => !('metainfo' in item));
  for (const item of items) for (const value of Object.values(item)) delete value['handle'];
  return JSON.stringify(items);
}

export class NftablesWriter implements RuleWriter {
  readonly mode = 'nftables';
  private randomFully: boolean | null = null;

  constructor(private readonly netns?: string) {}

  private get opts(): { netns?: string } {
    return this.netns ? { netns: this.netns } : {};
  }

  /** Whether the kernel takes `masquerade fully-random`: checked as upstream does, with a rule nft checks but never commits. */
  private async supportsRandomFully(): Promise<boolean> {
    if (this.randomFully === null) {
      const ref = tableRef(4);
      const input = [
        `add table ${ref}`,
        `add chain ${ref} masqueradeTest { type nat hook postrouting priority srcnat ; }`,
        `add rule ${ref} masqueradeTest ip saddr != 127.0.0.1 masquerade fully-random`,
        '',
      ].join('\n');
      this.randomFully = (await runTool(['nft', '--check', '-f', '-'], { ...this.opts, input })).code === 0;
    }
    return this.randomFully;
  }

  async snapshot(): Promise<string> {
    const reads = ([4, 6] as const).map(async (family) => {
      const argv = ['nft', '-j', 'list', 'table', ...tableRef(family).split(' ')];
      const r = await runTool(argv, this.opts);
      if (r.code === 0) return withoutHandles(r.stdout);
      if (NO_SUCH_TABLE.test(r.stderr)) return `(no table ${tableRef(family)})`;
      throw new NetfilterToolError(argv, r.code, r.stderr);
    });
    return (await Promise.all(reads)).join('\n');
  }

  async apply(want: WantedRules): Promise<void> {
    const randomFully = want.masq && !want.randomFullyDisable && (await this.supportsRandomFully());
    await mustRun(['nft', '-f', '-'], { ...this.opts, input: nftScript(want, randomFully) });
  }

  async remove(): Promise<boolean> {
    const listing = await runTool(['nft', '-j', 'list', 'tables'], this.opts).catch(() => null);
    // Without a working nft there is nothing it could have written.
    if (listing === null || listing.code !== 0) return false;
    const present = new Set(
      (JSON.parse(listing.stdout) as { nftables?: { table?: { family: string; name: string } }[] }).nftables
        ?.flatMap((item) => (item.table ? [`${item.table.family} ${item.table.name}`] : [])) ?? [],
    );
    const script = ([4, 6] as const).map(tableRef).filter((ref) => present.has(ref)).map((ref) => `delete table ${ref}\n`).join('');
    if (script === '') return false;
    await mustRun(['nft', '-f', '-'], { ...this.opts, input: script });
    return true;
  }
}
