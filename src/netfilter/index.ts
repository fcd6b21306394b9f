// The node's netfilter rules, kept in place: the forward accept rules (--iptables-forward-rules) and the
// masquerade rules (--ip-masq), written by the front end the network config names — iptables, or
// nftables with "EnableNFTables": true — as upstream flanneld v0.28.9 writes them.
//
// One Scheduler runs every pass, so two never overlap. The first pass writes our rules and then removes
// those of the other front end (a restart that switches modes never leaves the node without masquerade,
// nor with both for longer than a moment); a new lease rewrites them; every resync period a pass reads
// back what the kernel holds of ours and rewrites everything when it differs from what was last written
// (a rule deleted, a chain flushed, a rule someone added to our chains). Rules stay in place when the
// daemon stops, as upstream leaves them, unless removal is asked for (--iptables-cleanup).
import type { Ip4Net } from '../common/ip4.js';
import type { Ip6Net } from '../common/ip6.js';
import type { Logger } from '../common/log.js';
import { Scheduler } from '../common/scheduler.js';
import { IptablesWriter } from './iptables.js';
import { NftablesWriter } from './nftables.js';
import type { FamilyRules, NetfilterMode, RuleWriter, WantedRules } from './rule-set.js';

export type { NetfilterMode } from './rule-set.js';
export { checkBrNetfilter } from './br-netfilter.js';

export interface NetfilterOptions {
  mode: NetfilterMode;
  network: Ip4Net;
  /** Dual stack: the IPv6 network (rules for it once the lease has an IPv6 subnet). */
  ipv6Network: Ip6Net | null;
  ipMasq: boolean;
  forwardRules: boolean;
  /** --ip-masq-fully-random-disable. */
  randomFullyDisable: boolean;
  /** Between two checks of the rules (--iptables-resync). */
  resyncMs: number;
  log: Logger;
  /** Write the rules inside this named network namespace (tests); default: our own. */
  netns?: string;
}

/** This node's subnets, from its lease. */
export interface LeaseSubnets {
  subnet: Ip4Net;
  ipv6Subnet: Ip6Net | null;
}

export interface NetfilterRules {
  /** Our lease moved (lost and claimed elsewhere): the per-lease rules follow it. */
  updateSubnets(subnets: LeaseSubnets): Promise<void>;
  /** Ends the checks; removes our rules only when asked. */
  stop(opts?: { removeRules?: boolean }): Promise<void>;
}

export function ruleWriter(mode: NetfilterMode, netns?: string): RuleWriter {
  return mode === 'nftables' ? new NftablesWriter(netns) : new IptablesWriter(netns);
}

type Reason = 'start' | 'lease' | 'periodic';

function wanted(opts: NetfilterOptions, s: LeaseSubnets): WantedRules {
  const families: FamilyRules[] = [{ family: 4, network: opts.network, subnet: s.subnet }];
  if (opts.ipv6Network && s.ipv6Subnet) families.push({ family: 6, network: opts.ipv6Network, subnet: s.ipv6Subnet });
  return { masq: opts.ipMasq, forward: opts.forwardRules, randomFullyDisable: opts.randomFullyDisable, families };
}

/** Writes the rules for `subnets` (resolving once the first pass has ended, whatever its outcome) and keeps them in place. */
export async function startNetfilterRules(opts: NetfilterOptions, subnets: LeaseSubnets): Promise<NetfilterRules> {
  const { log, mode } = opts;
  const writer = ruleWriter(mode, opts.netns);
  const other = ruleWriter(mode === 'nftables' ? 'iptables' : 'nftables', opts.netns);
  let want = wanted(opts, subnets);
  /** What the kernel held of ours right after our last write; null until a write succeeded. */
  let written: string | null = null;
  let otherRemoved = false;
  let lastFailure = '';
  const watching = opts.ipMasq || opts.forwardRules;
  const fields = (): Record<string, unknown> => ({
    mode, masq: want.masq, forward: want.forward, subnets: want.families.map((f) => f.subnet.toString()),
  });

  /** The other front end's rules, once: after ours are in, so that the node is never without masquerade. */
  const removeOther = async (): Promise<void> => {
    if (otherRemoved) return;
    if (await other.remove()) log.info({ removed: other.mode, mode }, `removed the ${other.mode} rules of an earlier run: the network config asks for ${mode}`);
    otherRemoved = true;
  };
  const write = async (): Promise<void> => {
    await writer.apply(want);
    [written] = await Promise.all([writer.snapshot(want), removeOther()]);
  };
  const abort = new AbortController();
  const scheduler = new Scheduler<Reason>({
    signal: abort.signal,
    periodic: { intervalMs: opts.resyncMs, reason: 'periodic' },
    pass: async (reasons) => {
      if (written === null || reasons.has('start') || reasons.has('lease')) {
        await write();
        log.info(fields(), 'netfilter rules written');
      } else if (watching && (await writer.snapshot(want)) !== written) {
        log.info(fields(), 'netfilter rules missing or changed by another program; rewriting them');
        await write();
      }
      await removeOther();
      lastFailure = '';
    },
    onError: (err) => {
      // Logged once per distinct failure: the pass repeats every resync period.
      const text = err instanceof Error ? err.message : String(err);
      if (text !== lastFailure) log.error({ ...fields(), err: text }, 'cannot write the netfilter rules; retrying every resync period');
      lastFailure = text;
    },
  });

  await scheduler.request('start');
  scheduler.startPeriodic();

  return {
    async updateSubnets(next: LeaseSubnets): Promise<void> {
      const nextWant = wanted(opts, next);
      if (JSON.stringify(nextWant.families.map((f) => f.subnet.toString())) === JSON.stringify(want.families.map((f) => f.subnet.toString()))) return;
      want = nextWant;
      await scheduler.request('lease');
    },
    async stop(stopOpts: { removeRules?: boolean } = {}): Promise<void> {
      abort.abort();
      await scheduler.idle();
      if (!stopOpts.removeRules) return;
      try {
        await writer.remove();
      } catch (err) {
        log.error({ mode, err: (err as Error).message }, 'cannot remove the netfilter rules');
      }
    },
  };
}
