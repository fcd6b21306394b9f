// The two ways into the kernel tables, behind one interface: rtnetlink through the addon (netlink.ts,
// the default) and iproute2's `ip`/`bridge -force -batch` with checked words (iproute2.ts, the
// fallback where the addon is not built). Each writes a batch of ops with the kernel's verdict per
// entry, and reads the tables a reconciler looks after, with a digest of what it read.
import type { Logger } from '../common/log.js';
import type { IpNet, KernelEntry, KernelOp } from './entries.js';
import { Iproute2Path } from './iproute2.js';
import { NetlinkPath, loadNetlink } from './netlink.js';

/** What a full pass reads. */
export interface DumpScope {
  /** Main-table routes (unicast and blackhole, both families) whose destination lies inside one of these. */
  routeRoots: readonly IpNet[];
  /**
   * Devices whose neighbours (both families, with a link-layer address; not the kernel's own NOARP
   * ones) and FDB entries (with a destination) are read.
   */
  devices: readonly string[];
}

export interface KernelDump {
  /** Changes whenever an entry in scope changes (and only then, as far as the path can tell). */
  digest: string;
  /** Absent when `digest` equals the one the caller said it could skip: the tables are as they were then. */
  entries?: KernelEntry[];
}

export interface KernelPath {
  readonly name: 'netlink' | 'iproute2';
  /**
   * Applies the ops in order, each on its own: the verdict per op is null when the kernel took it, or
   * why it was refused. A refused entry never stops the others. Rejects only when the path itself
   * failed (nothing can be said of any op then).
   */
  apply(ops: readonly KernelOp[]): Promise<(string | null)[]>;
  /** Reads the entries in scope; skips building them when the digest equals `skipDigest`. */
  dump(scope: DumpScope, skipDigest: string): Promise<KernelDump>;
  close(): void;
}

/** Opens the path entries go through: rtnetlink when asked for and the addon is built, else iproute2. */
export function openKernelPath(want: 'netlink' | 'iproute2', netns: string | undefined, log: Logger): KernelPath {
  if (want === 'netlink' && loadNetlink()) {
    try {
      return new NetlinkPath(netns);
    } catch (err) {
      log.warn({ err }, 'no rtnetlink socket; kernel tables go through ip -batch');
    }
  }
  return new Iproute2Path(netns);
}
