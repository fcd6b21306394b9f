// The two ways into the kernel tables, behind one interface: rtnetlink through the addon (netlink.ts,
// the default) and iproute2's `ip`/`bridge -force -batch` with checked words (iproute2.ts, the
// fallback where the addon is not built). Each writes a batch of ops with the kernel's verdict per
// entry, and reads the tables a reconciler looks after, with a digest of what it read.
import type { IpNet, KernelEntry, KernelOp } from './entries.js';

/** What a full pass reads. */
export interface DumpScope {
  /** Main-table routes (unicast and blackhole, both families) whose destination lies inside one of these. */
  routeRoots: readonly IpNet[];
  /** Devices whose neighbours (both families, with a link-layer address) and FDB entries (with a destination) are read. */
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
