// PLACEHOLDER: replaced by the real iptables rules (FORWARD accept rules and IP masquerade).
import type { Logger } from '../daemon/log.js';
import type { Ip4Net } from '../subnet/ip4.js';

export interface IptablesOptions {
  network: Ip4Net;
  /** This node's leased subnet. */
  subnet: Ip4Net;
  ipMasq: boolean;
  forwardRules: boolean;
  log: Logger;
  /** How often rules are checked and restored; default 5 s. */
  resyncMs?: number;
}

export interface IptablesRules {
  /** Our subnet changed (lease lost and re-claimed elsewhere). */
  updateSubnet(subnet: Ip4Net): Promise<void>;
  /** Stops the periodic check; removes the rules only when asked. */
  stop(opts?: { removeRules?: boolean }): Promise<void>;
}

export async function startIptablesRules(_opts: IptablesOptions): Promise<IptablesRules> {
  return { async updateSubnet() {}, async stop() {} };
}
