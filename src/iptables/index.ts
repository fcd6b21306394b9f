// Keeps flanneld's iptables rules in place: the FORWARD accept rules (--iptables-forward-rules) and the
// nat masquerade rules (--ip-masq). Rules are checked with `iptables -C` every resync period; when any is
// missing (another program flushed a table, an administrator deleted one), our chains are emptied and
// refilled in one iptables-restore transaction, because the order of the rules matters.
import { SerialQueue } from '../common/serial-queue.js';
import type { Logger } from '../common/log.js';
import type { Ip4Net } from '../common/ip4.js';
import type { Ip6Net } from '../common/ip6.js';
import { forwardRules, masqRules, ownChains, restoreLine, type IptablesRule, type IptablesTable } from './rules.js';
import { iptablesRestore, iptablesSupportsRandomFully, runIptables, type IptablesRunOptions } from './runner.js';

export interface IptablesOptions {
  /** An IPv6 network (with `ipv6: true`) for the ip6tables half of a dual-stack node. */
  network: Ip4Net | Ip6Net;
  /** This node's leased subnet. */
  subnet: Ip4Net | Ip6Net;
  /** Program ip6tables instead of iptables. */
  ipv6?: boolean;
  ipMasq: boolean;
  forwardRules: boolean;
  log: Logger;
  /** How often rules are checked and restored; default 5 s. */
  resyncMs?: number;
  /** Program the rules inside this named network namespace (tests); default: our own namespace. */
  netns?: string;
}

export interface IptablesRules {
  /** Our subnet changed (lease lost and re-claimed elsewhere). */
  updateSubnet(subnet: Ip4Net | Ip6Net): Promise<void>;
  /** Stops the periodic check; removes the rules only when asked. */
  stop(opts?: { removeRules?: boolean }): Promise<void>;
}

const DEFAULT_RESYNC_MS = 5_000;

async function exists(rule: IptablesRule, run: IptablesRunOptions): Promise<boolean> {
  return (await runIptables(['-t', rule.table, '-C', rule.chain, ...rule.spec], run)).code === 0;
}

/** True when every rule (and so every chain of ours) is present. */
async function allPresent(rules: readonly IptablesRule[], run: IptablesRunOptions): Promise<boolean> {
  for (const rule of rules) if (!(await exists(rule, run))) return false;
  return true;
}

/**
 * The restore transaction that (re)creates a rule set: each chain of ours declared (created, or emptied
 * if it exists), each jump from a built-in chain deleted if present and inserted first again.
 */
async function repairTransaction(rules: readonly IptablesRule[], run: IptablesRunOptions): Promise<string> {
  const tables = new Map<IptablesTable, string[]>();
  const lines = (t: IptablesTable): string[] => {
    let l = tables.get(t);
    if (!l) tables.set(t, (l = []));
    return l;
  };
  for (const { table, chain } of ownChains(rules)) lines(table).push(`:${chain} - [0:0]`);
  for (const rule of rules) {
    if (rule.position === 'insert') {
      if (await exists(rule, run)) lines(rule.table).push(restoreLine('-D', rule));
      lines(rule.table).push(restoreLine('-I', rule));
    } else {
      lines(rule.table).push(restoreLine('-A', rule));
    }
  }
  return [...tables].map(([table, l]) => `*${table}\n${l.join('\n')}\nCOMMIT\n`).join('');
}

async function removeRuleSet(rules: readonly IptablesRule[], run: IptablesRunOptions): Promise<void> {
  for (const rule of rules.filter((r) => r.position === 'insert')) {
    // A jump added twice (by hand, or by another copy of the daemon) is removed entirely.
    for (let i = 0; i < 10 && (await exists(rule, run)); i++) {
      await runIptables(['-t', rule.table, '-D', rule.chain, ...rule.spec], run);
    }
  }
  for (const { table, chain } of ownChains(rules)) {
    await runIptables(['-t', table, '-F', chain], run);
    await runIptables(['-t', table, '-X', chain], run);
  }
}

export async function startIptablesRules(opts: IptablesOptions): Promise<IptablesRules> {
  const run: IptablesRunOptions = { ...(opts.netns ? { netns: opts.netns } : {}), ...(opts.ipv6 ? { ipv6: true } : {}) };
  const log = opts.log; // the caller names the component
  let subnet = opts.subnet;
  let randomFully = false;
  if (opts.ipMasq) {
    try {
      randomFully = await iptablesSupportsRandomFully(run);
    } catch (err) {
      log.error({ err: String(err) }, 'cannot run iptables; rules will be retried every resync period');
    }
  }

  const desired = (): IptablesRule[] => [
    ...(opts.forwardRules ? forwardRules(opts.network) : []),
    ...(opts.ipMasq ? masqRules(opts.network, subnet, randomFully) : []),
  ];

  // Every change to the tables goes through one queue, so checks never overlap.
  const queue = new SerialQueue();
  const serial = (task: () => Promise<void>): Promise<void> => queue.run(task);

  let lastFailure = '';
  let stopped = false;
  const ensure = (): Promise<void> =>
    serial(async () => {
      const rules = desired();
      if (rules.length === 0 || stopped) return;
      try {
        if (await allPresent(rules, run)) return;
        log.info({ masq: opts.ipMasq, forward: opts.forwardRules }, 'iptables rules missing; (re)creating them');
        await iptablesRestore(await repairTransaction(rules, run), run);
        lastFailure = '';
      } catch (err) {
        // Logged once per distinct failure: the check repeats every few seconds.
        const text = String(err);
        if (text !== lastFailure) log.error({ err: text }, 'failed to program iptables rules');
        lastFailure = text;
      }
    });

  await ensure();
  const resyncMs = opts.resyncMs ?? DEFAULT_RESYNC_MS;
  let timer: NodeJS.Timeout | null = null;
  if (opts.forwardRules || opts.ipMasq) {
    timer = setInterval(() => void ensure(), resyncMs);
    timer.unref();
  }

  return {
    async updateSubnet(next: Ip4Net | Ip6Net): Promise<void> {
      if (next.toString() === subnet.toString()) return;
      subnet = next;
      // The masquerade chain is refilled as a whole, which also drops the rule for the old subnet.
      await ensure();
    },
    async stop(stopOpts: { removeRules?: boolean } = {}): Promise<void> {
      if (timer) clearInterval(timer);
      timer = null;
      stopped = true;
      if (stopOpts.removeRules) {
        await serial(async () => {
          try {
            await removeRuleSet(desired(), run);
          } catch (err) {
            log.error({ err: String(err) }, 'failed to remove iptables rules');
          }
        });
      } else {
        await queue.idle();
      }
    },
  };
}
