// The two ways into the kernel tables, behind one interface: rtnetlink through the addon (netlink.ts,
// the default) and iproute2's `ip`/`bridge -force -batch` with checked words (iproute2.ts, the
// fallback where the addon is not built). Each writes a batch of ops with the kernel's verdict per
// entry, and reads the tables a reconciler looks after, with a digest of what it read. WireGuard
// devices' configuration has a path of its own (wireguard-path.ts, through wg(8)); withWireguard()
// puts it beside a kernel path, so that one reconciler keeps both.
import type { Logger } from '../common/log.js';
import { type KernelEntry, type KernelOp, type IpNet, type ReconciledEntry, isKernelEntry } from './entries.js';
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
  /** WireGuard devices whose settings and peers are read (a path with WireGuard's beside it). */
  wgDevices?: readonly string[];
}

export interface KernelDump<E extends ReconciledEntry = KernelEntry> {
  /** Changes whenever an entry in scope changes (and only then, as far as the path can tell). */
  digest: string;
  /** Absent when `digest` equals the one the caller said it could skip: the tables are as they were then. */
  entries?: E[];
}

/** What a reconciler writes through and reads from: a kernel path, alone or with WireGuard's beside it. */
export interface EntryPath {
  /** The kernel path's name ("netlink", "iproute2"). */
  readonly name: string;
  /**
   * Applies the ops in order, each on its own: the verdict per op is null when the kernel took it, or
   * why it was refused. A refused entry never stops the others. Rejects only when the path itself
   * failed (nothing can be said of any op then).
   */
  apply(ops: readonly KernelOp[]): Promise<(string | null)[]>;
  /** Reads the entries in scope; skips building them when the digest equals `skipDigest`. */
  dump(scope: DumpScope, skipDigest: string): Promise<KernelDump<ReconciledEntry>>;
  close(): void;
}

/** A way into the kernel's own tables: routes, neighbours and FDB entries. */
export interface KernelPath extends EntryPath {
  readonly name: 'netlink' | 'iproute2';
  dump(scope: DumpScope, skipDigest: string): Promise<KernelDump<KernelEntry>>;
}

/** WireGuard devices' settings and peers, written and read through wg(8) (wireguard-path.ts). */
export interface WgPath {
  apply(ops: readonly KernelOp[]): Promise<(string | null)[]>;
  dump(devices: readonly string[], skipDigest: string): Promise<KernelDump<ReconciledEntry>>;
}

/**
 * A kernel path with WireGuard's beside it: each op goes to the path of its kind, in the plan's order
 * (consecutive ops of one path in one call); a dump reads both at once, and its digest is both digests.
 * Each part is asked to skip against its own last digest, and what it skipped is the part held from
 * then: an unchanged kernel table costs no conversion when only a WireGuard peer changed, and back.
 */
export function withWireguard(kernel: KernelPath, wg: WgPath): EntryPath {
  let heldKernel: { digest: string; entries: ReconciledEntry[] } | null = null;
  let heldWg: { digest: string; entries: ReconciledEntry[] } | null = null;
  return {
    name: kernel.name,
    async apply(ops) {
      const verdicts: (string | null)[] = new Array<string | null>(ops.length).fill(null);
      for (let start = 0; start < ops.length; ) {
        const ofKernel = isKernelEntry(ops[start]!.entry);
        let end = start + 1;
        while (end < ops.length && isKernelEntry(ops[end]!.entry) === ofKernel) end++;
        const run = ops.slice(start, end);
        const got = await (ofKernel ? kernel.apply(run) : wg.apply(run));
        got.forEach((v, i) => (verdicts[start + i] = v));
        start = end;
      }
      return verdicts;
    },
    async dump(scope, skipDigest) {
      const [k, w] = await Promise.all([kernel.dump(scope, heldKernel?.digest ?? ''), wg.dump(scope.wgDevices ?? [], heldWg?.digest ?? '')]);
      heldKernel = { digest: k.digest, entries: k.entries ?? heldKernel!.entries };
      heldWg = { digest: w.digest, entries: w.entries ?? heldWg!.entries };
      const digest = `${k.digest} ${w.digest}`;
      if (digest === skipDigest) return { digest };
      return { digest, entries: [...heldKernel.entries, ...heldWg.entries] };
    },
    close() {
      kernel.close();
    },
  };
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
