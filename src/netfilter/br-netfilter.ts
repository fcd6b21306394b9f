// The start-up check upstream flanneld makes in iptables mode: without the br_netfilter module, traffic
// between two pods on the same bridge never passes through iptables, so Kubernetes services and network
// policies silently fail for it (kubeadm stopped checking the module in Kubernetes 1.30). nftables mode
// does not need it and skips the check.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Family } from './rule-set.js';

/** Throws, saying what to do, when br_netfilter's switch for a family is missing. `procRoot` is /proc (tests give another). */
export function checkBrNetfilter(families: readonly Family[], procRoot = '/proc'): void {
  for (const family of families) {
    const file = join(procRoot, 'sys/net/bridge', family === 6 ? 'bridge-nf-call-ip6tables' : 'bridge-nf-call-iptables');
    if (!existsSync(file)) {
      throw new Error(
        `the br_netfilter kernel module is not loaded (${file} does not exist): traffic between pods on one bridge would bypass ` +
          'iptables. Load it with `modprobe br_netfilter` (and list it in /etc/modules-load.d/ for the next boot), ' +
          'or use nftables mode ("EnableNFTables": true in the network config)',
      );
    }
  }
}
