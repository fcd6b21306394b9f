// The iptables writer: upstream flanneld v0.28.9's chains and rules, for iptables and ip6tables. Our
// chains (FLANNEL-POSTRTG in nat, FLANNEL-FWD in filter) are reached by one jump appended to the
// built-in chain, and each apply is one iptables-restore transaction per family that declares our chain
// (creating or emptying it), moves our jump to the end and fills the chain in order — so rules of an
// earlier subnet or of an older flanneld (v0.20.2 inserted its jumps first) never survive it.
import { MULTICAST, cidrWord, type Family, type FamilyRules, type RuleWriter, type WantedRules } from './rule-set.js';
import { NetfilterToolError, mustRun, runTool } from './runner.js';

interface ChainSet {
  key: 'masq' | 'forward';
  table: 'nat' | 'filter';
  builtin: 'POSTROUTING' | 'FORWARD';
  chain: string;
  comment: string;
  rules(f: FamilyRules, randomFully: boolean): string[][];
}

export const MASQ_CHAIN = 'FLANNEL-POSTRTG';
export const FORWARD_CHAIN = 'FLANNEL-FWD';
const comment = (text: string): string[] => ['-m', 'comment', '--comment', text];

/** The masquerade chain's rules in upstream's order, as `iptables -S` prints them after `-A FLANNEL-POSTRTG`. */
export function masqRules(f: FamilyRules, randomFully: boolean): string[][] {
  const n = cidrWord(f.network);
  const sn = cidrWord(f.subnet);
  const c = comment('flanneld masq');
  const masquerade = randomFully ? ['-j', 'MASQUERADE', '--random-fully'] : ['-j', 'MASQUERADE'];
  return [
    // kube-proxy's own masquerading is left to it.
    ['-m', 'mark', '--mark', '0x4000/0x4000', ...c, '-j', 'RETURN'],
    // Between this node's pods and the rest of the network, addresses stay as they are.
    ['-s', sn, '-d', n, ...c, '-j', 'RETURN'],
    ['-s', n, '-d', sn, ...c, '-j', 'RETURN'],
    // Outside traffic a node forwards to this node's pods keeps its source.
    ['!', '-s', n, '-d', sn, ...c, '-j', 'RETURN'],
    // Pods reaching the outside world (multicast aside) take the node's address.
    ['-s', n, '!', '-d', MULTICAST[f.family], ...c, ...masquerade],
    // The host reaching pods elsewhere: replies must come back through the overlay.
    ['!', '-s', n, '-d', n, ...c, ...masquerade],
  ];
}

/** The forward chain's rules: accept from and to the network (hosts whose FORWARD policy is DROP, e.g. Docker's). */
export function forwardRules(f: FamilyRules): string[][] {
  const n = cidrWord(f.network);
  const c = comment('flanneld forward');
  return [['-s', n, ...c, '-j', 'ACCEPT'], ['-d', n, ...c, '-j', 'ACCEPT']];
}

const SETS: readonly ChainSet[] = [
  { key: 'masq', table: 'nat', builtin: 'POSTROUTING', chain: MASQ_CHAIN, comment: 'flanneld masq', rules: masqRules },
  { key: 'forward', table: 'filter', builtin: 'FORWARD', chain: FORWARD_CHAIN, comment: 'flanneld forward', rules: (f) => forwardRules(f) },
];

/** A rule as an iptables-restore line, in `iptables -S`'s own quoting (a word with a space is double-quoted). */
export function ruleLine(chain: string, spec: readonly string[]): string {
  const words = spec.map((w) => {
    if (/["\\\n]/.test(w)) throw new Error(`refusing to pass ${JSON.stringify(w)} to iptables-restore`);
    return /\s/.test(w) || w === '' ? `"${w}"` : w;
  });
  return ['-A', chain, ...words].join(' ');
}

/** What `iptables -S` shows of one chain set: the jumps to our chain, and our chain (null when absent). */
export interface ChainSetState {
  jumps: string[];
  chain: string[] | null;
}

const binary = (family: Family): string => (family === 6 ? 'ip6tables' : 'iptables');
const WAIT = ['-w', '5'];
const lines = (text: string): string[] => text.split('\n').filter((l) => l !== '');
/** iptables' exit code for "no such chain" (2 is a usage error, 4 a resource problem such as the lock). */
const NO_SUCH_CHAIN = 1;

/**
 * The restore transaction that turns `states` into what is wanted: for a wanted set, our chain declared
 * (which empties it), every jump to it deleted and one appended, its rules appended in order; for a set
 * not wanted, its jumps deleted and its chain flushed and removed. Empty when there is nothing to do.
 */
export function restoreInput(parts: readonly { set: 'masq' | 'forward'; state: ChainSetState; want: FamilyRules | null; randomFully: boolean }[]): string {
  const tables = new Map<string, { declare: string[]; lines: string[] }>();
  for (const { set: key, state, want, randomFully } of parts) {
    const set = SETS.find((s) => s.key === key)!;
    let t = tables.get(set.table);
    if (!t) tables.set(set.table, (t = { declare: [], lines: [] }));
    for (const jump of state.jumps) t.lines.push(jump.replace(/^-A /, '-D '));
    if (want) {
      t.declare.push(`:${set.chain} - [0:0]`);
      t.lines.push(ruleLine(set.builtin, [...comment(set.comment), '-j', set.chain]));
      for (const rule of set.rules(want, randomFully)) t.lines.push(ruleLine(set.chain, rule));
    } else if (state.chain !== null) {
      t.lines.push(`-F ${set.chain}`, `-X ${set.chain}`);
    }
  }
  return [...tables]
    .filter(([, t]) => t.declare.length + t.lines.length > 0)
    .map(([table, t]) => [`*${table}`, ...t.declare, ...t.lines, 'COMMIT', ''].join('\n'))
    .join('');
}

export class IptablesWriter implements RuleWriter {
  readonly mode = 'iptables';
  private readonly randomFully = new Map<Family, boolean>();

  constructor(private readonly netns?: string) {}

  private get opts(): { netns?: string } {
    return this.netns ? { netns: this.netns } : {};
  }

  private async readSet(family: Family, set: ChainSet): Promise<ChainSetState> {
    const bin = binary(family);
    const [builtin, own] = await Promise.all([
      mustRun([bin, ...WAIT, '-t', set.table, '-S', set.builtin], this.opts),
      runTool([bin, ...WAIT, '-t', set.table, '-S', set.chain], this.opts),
    ]);
    const jump = new RegExp(` -j ${set.chain}( |$)`);
    if (own.code !== 0 && own.code !== NO_SUCH_CHAIN) throw new NetfilterToolError([bin, '-t', set.table, '-S', set.chain], own.code, own.stderr);
    return { jumps: lines(builtin).filter((l) => jump.test(l)), chain: own.code === 0 ? lines(own.stdout) : null };
  }

  /** MASQUERADE --random-fully needs iptables 1.6.2 or newer (go-iptables, which upstream uses, asks the same). */
  private async supportsRandomFully(family: Family): Promise<boolean> {
    let known = this.randomFully.get(family);
    if (known === undefined) {
      const m = /v(\d+)\.(\d+)\.(\d+)/.exec(await mustRun([binary(family), '--version'], this.opts));
      const [major, minor, patch] = m ? [Number(m[1]), Number(m[2]), Number(m[3])] : [0, 0, 0];
      known = major > 1 || (major === 1 && (minor > 6 || (minor === 6 && patch >= 2)));
      this.randomFully.set(family, known);
    }
    return known;
  }

  async snapshot(want: WantedRules): Promise<string> {
    const reads = want.families.flatMap((f) => SETS.filter((set) => want[set.key]).map(async (set) => {
      const s = await this.readSet(f.family, set);
      return [`${f.family} ${set.table}`, ...s.jumps, ...(s.chain ?? ['(no chain)'])].join('\n');
    }));
    return (await Promise.all(reads)).join('\n');
  }

  async apply(want: WantedRules): Promise<void> {
    await this.write(want);
  }

  async remove(): Promise<boolean> {
    return this.write({ masq: false, forward: false, randomFullyDisable: true, families: [] });
  }

  /** Writes `want`, one transaction per family (the families side by side); true when a transaction was needed. */
  private async write(want: WantedRules): Promise<boolean> {
    const written = await Promise.all(([4, 6] as const).map((family) => this.writeFamily(family, want)));
    return written.some(Boolean);
  }

  private async writeFamily(family: Family, want: WantedRules): Promise<boolean> {
    const f = want.families.find((x) => x.family === family) ?? null;
    let states: ChainSetState[];
    let randomFully: boolean;
    try {
      [randomFully, ...states] = await Promise.all([
        f !== null && want.masq && !want.randomFullyDisable ? this.supportsRandomFully(family) : false,
        ...SETS.map((set) => this.readSet(family, set)),
      ]);
    } catch (err) {
      // A family without a lease here, whose tool cannot even list (no ip6tables, IPv6 off), has nothing of ours.
      if (f === null) return false;
      throw err;
    }
    const input = restoreInput(SETS.map((set, k) => ({ set: set.key, state: states[k]!, want: want[set.key] ? f : null, randomFully })));
    if (input === '') return false;
    await mustRun([`${binary(family)}-restore`, ...WAIT, '--noflush'], { ...this.opts, input });
    return true;
  }
}
