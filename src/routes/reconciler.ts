// One reconciler for the kernel tables a backend looks after: routes (unicast and blackhole),
// neighbours and FDB entries, of both families. A backend declares what each owner (a peer, keyed by
// its subnet) wants; the reconciler makes the kernel hold exactly that:
// - changes mark keys in the model (model.ts), and an event pass sends only the marked keys;
// - a full pass reads the tables in scope (one reader per table, per path), takes them as the
//   programmed side, repairs whatever differs and removes entries nobody wants that are ours; a digest
//   of the dump lets an unchanged kernel skip the compare;
// - one Scheduler runs the passes: requests coalesce, a periodic full pass repairs what others changed,
//   the AbortSignal stops it;
// - one writer (path.ts) gives a verdict per entry: a refused entry is logged once per distinct
//   error, counted (flannel_kernel_programming_errors_total{kind}), left out of the programmed side
//   and retried by the next full pass, while every other entry goes in.
import { performance } from 'node:perf_hooks';
import type { Logger } from '../common/log.js';
import { kernelMetrics } from '../common/metrics.js';
import { Scheduler } from '../common/scheduler.js';
import { describeEntry, type EntryKind, type Family, type ReconciledEntry, type KernelOp } from './entries.js';
import { KernelModel } from './model.js';
import type { DumpScope, EntryPath } from './path.js';

/** 'event': send what changed; 'resync': a full pass against what the kernel holds. */
export type PassReason = 'event' | 'resync';

export interface KernelScope extends DumpScope {
  /** Whether an entry read from the kernel, that nobody wants, is ours to remove. */
  owns(e: ReconciledEntry): boolean;
}

export interface ReconcilerOptions {
  /** Names the reconciler's owner in logs ("vxlan", "host-gw", ...). */
  name: string;
  log: Logger;
  path: EntryPath;
  /** What a full pass reads and may remove; asked at every full pass (it may change with our lease). */
  scope: () => KernelScope;
  /** Stops the periodic pass and every pass not yet started. */
  signal: AbortSignal;
  /** The periodic full pass, from startPeriodic() on; 0 disables it. */
  resyncIntervalMs: number;
  /**
   * Runs first in every pass, with its reasons (device repairs, rechecks of skipped peers); returns how
   * many repairs it made. A failure is logged and counted, and the pass goes on.
   */
  beforePass?: (reasons: ReadonlySet<PassReason>, signal: AbortSignal) => Promise<number>;
  /** Called after every batch the kernel was sent (gauges). */
  afterApply?: () => void;
}

export class KernelReconciler {
  private readonly model = new KernelModel();
  private readonly scheduler: Scheduler<PassReason>;
  /** A full pass has read the kernel: the model's programmed side is real. */
  private snapshotTaken = false;
  /** The dump of the last full pass that found nothing to do, and the model's version then. */
  private clean: { digest: string; version: number } | null = null;
  /** Last logged failure per entry key, so that a refused entry is logged once per distinct error. */
  private readonly failures = new Map<string, string>();
  /** Changes made by the last full pass (resync() answers with it). */
  private lastFullPassChanges = 0;
  private submitted = false;
  readonly counters = { eventPasses: 0, resyncs: 0, unchangedPasses: 0, repairs: 0, errors: 0 };

  constructor(private readonly opts: ReconcilerOptions) {
    this.scheduler = new Scheduler<PassReason>({
      signal: opts.signal,
      periodic: opts.resyncIntervalMs > 0 ? { intervalMs: opts.resyncIntervalMs, reason: 'resync' } : undefined,
      pass: (reasons, signal) => this.pass(reasons, signal),
      onError: (err) => {
        this.countError('sync');
        opts.log.error({ err }, `${opts.name}: kernel update failed; the next resync retries it`);
      },
    });
  }

  get path(): EntryPath {
    return this.opts.path;
  }

  /** Sets what `owner` wants (replacing what it wanted before); returns whether anything changed. Sent by the next pass. */
  set(owner: string, entries: readonly ReconciledEntry[]): boolean {
    return this.model.set(owner, entries);
  }

  /** Drops what `owner` wanted; returns whether it wanted anything. Removed by the next pass. */
  delete(owner: string): boolean {
    return this.model.delete(owner);
  }

  hasOwner(owner: string): boolean {
    return this.model.hasOwner(owner);
  }

  /** Owners that want entries. */
  get owners(): number {
    return this.model.owners;
  }

  /** Programmed entries of one kind (and family). */
  programmed(kind: EntryKind, family?: Family): number {
    return this.model.programmedCount(kind, family);
  }

  /**
   * Asks for a pass that sends what changed (the first pass ever is a full one). Resolves once a pass
   * begun after this call has ended; never rejects.
   */
  request(): Promise<void> {
    return this.scheduler.request('event');
  }

  /** A full pass now (behind the one running); resolves with the changes it made, repairs included. */
  async resync(): Promise<number> {
    await this.scheduler.request('resync');
    return this.lastFullPassChanges;
  }

  /** Runs `task` between passes (device work whose caller needs the outcome). */
  exclusive<T>(task: () => Promise<T>): Promise<T> {
    return this.scheduler.exclusive(task);
  }

  /** Starts the periodic full pass (idempotent). Call it once the wanted set is complete. */
  startPeriodic(): void {
    this.scheduler.startPeriodic();
  }

  /**
   * A batch of changes is in (for a backend: one call's lease events). The first submit says the wanted
   * set is complete — the first batch carries every lease — so it starts the periodic full pass (which
   * may remove what nobody wants) and resolves once its pass, a full one, is done: the daemon is then
   * ready with every peer programmed. Later submits ask for a pass and resolve at once, so that intake
   * never waits for the kernel; what arrives while a pass runs joins the next one.
   */
  async submit(): Promise<void> {
    const first = !this.submitted;
    this.submitted = true;
    this.startPeriodic();
    const done = this.request();
    if (first) await done;
  }

  /** Whether submit() was called: the wanted set is complete. */
  get complete(): boolean {
    return this.submitted;
  }

  /** Resolves once no pass runs or waits. */
  settled(): Promise<void> {
    return this.scheduler.idle();
  }

  stats(): Record<string, number> {
    return { netlink: this.opts.path.name === 'netlink' ? 1 : 0, passes: this.scheduler.passes, ...this.counters };
  }

  /** Waits for the pass in flight (the caller has aborted the signal), then closes the path. */
  async close(): Promise<void> {
    await this.scheduler.idle();
    this.opts.path.close();
  }

  private async pass(reasons: ReadonlySet<PassReason>, signal: AbortSignal): Promise<void> {
    let repairs = 0;
    if (this.opts.beforePass) {
      try {
        repairs = await this.opts.beforePass(reasons, signal);
      } catch (err) {
        this.countError('link');
        this.opts.log.error({ err }, `${this.opts.name}: device repair failed; the next resync retries it`);
      }
    }
    if (!reasons.has('resync') && this.snapshotTaken) {
      const ops = this.model.plan();
      if (ops.length > 0) {
        this.counters.eventPasses++;
        await this.apply(ops, 'event');
      }
      return;
    }
    const reason = this.snapshotTaken ? 'resync' : 'start';
    if (reason === 'resync') this.counters.resyncs++;
    const changes = repairs + (await this.fullPass(reason));
    this.lastFullPassChanges = changes;
    if (reason === 'resync' && changes > 0) {
      this.counters.repairs += changes;
      kernelMetrics.repairs.inc(changes);
      this.opts.log.info({ changes }, `resync repaired ${this.opts.name} kernel state`);
    }
  }

  /** Reads the kernel, takes it as the programmed side, and applies what differs. Returns the changes made. */
  private async fullPass(reason: 'start' | 'resync'): Promise<number> {
    // Event deltas first, so that what the dump turns up afterwards is a repair.
    if (this.snapshotTaken && this.model.pending > 0) await this.apply(this.model.plan(), 'event');
    const scope = this.opts.scope();
    // The kernel holds exactly what it held at a pass that found nothing to do, and nothing wanted
    // changed since: it still matches, and building and comparing the entries can be skipped.
    const skippable = this.clean && this.clean.version === this.model.version && this.model.pending === 0 ? this.clean.digest : '';
    const dump = await this.opts.path.dump(scope, skippable);
    if (!dump.entries) {
      this.counters.unchangedPasses++;
      return 0;
    }
    const extra = this.model.resetFromKernel(dump.entries, (e) => scope.owns(e));
    this.snapshotTaken = true;
    const ops = [...extra, ...this.model.plan()];
    this.clean = ops.length === 0 ? { digest: dump.digest, version: this.model.version } : null;
    return this.apply(ops, reason);
  }

  /** Sends the ops and records each verdict. Returns how many the kernel took. */
  private async apply(ops: readonly KernelOp[], reason: 'event' | 'start' | 'resync'): Promise<number> {
    if (ops.length === 0) return 0;
    const started = performance.now();
    let verdicts: (string | null)[];
    try {
      verdicts = await this.opts.path.apply(ops);
    } catch (err) {
      this.opts.log.error({ err, path: this.opts.path.name }, `${this.opts.name}: cannot send the kernel changes`);
      const message = `not applied: ${(err as Error).message}`;
      verdicts = ops.map(() => message);
    }
    let accepted = 0;
    ops.forEach((op, i) => {
      const refused = verdicts[i] ?? null;
      if (refused !== null) return this.refused(op, refused);
      this.model.applied(op);
      this.failures.delete(op.entry.key);
      kernelMetrics.changes.inc({ kind: op.entry.kind });
      accepted++;
    });
    kernelMetrics.applySeconds.observe({ reason }, (performance.now() - started) / 1000);
    this.opts.afterApply?.();
    this.opts.log.debug({ reason, ops: ops.length, accepted, ms: Math.round(performance.now() - started) }, `applied ${this.opts.name} kernel table changes`);
    return accepted;
  }

  private refused(op: KernelOp, error: string): void {
    this.countError(op.entry.kind);
    const fields = { kind: op.entry.kind, action: op.action, subnet: op.owner, entry: describeEntry(op.entry), error };
    if (this.failures.get(op.entry.key) === error) {
      this.opts.log.debug(fields, 'kernel refused an entry again; retrying at the next resync');
      return;
    }
    this.failures.set(op.entry.key, error);
    this.opts.log.warn(fields, 'kernel refused an entry; every other entry is applied, this one is retried at the next resync');
  }

  /** Counts an error of `kind` (an entry kind, or "sync", "link", "address"). */
  countError(kind: string): void {
    this.counters.errors++;
    kernelMetrics.errors.inc({ kind });
  }
}
