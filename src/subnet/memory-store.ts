// A LeaseStore kept in memory, with etcd's semantics where the lease manager depends on them: one
// revision counter for every write, create-if-absent, compare-and-swap and compare-and-delete on the
// modification revision, listings filtered by creation revision, expiring leases (on the injected
// clock) whose keys vanish with them, a history that watches replay from any revision until it is
// compacted, and an unavailable state in which every call fails and watches pause. Keys and values
// are stored as text and read through the same parser as etcd's, so malformed values behave alike.
// Used by the fast unit tests of the lease manager.
import { type Clock, type TimerHandle, systemClock } from '../common/clock.js';
import { Wakeup } from '../common/retry.js';
import type { Ip4Net } from '../common/ip4.js';
import type { Ip6Net } from '../common/ip6.js';
import { type LeaseAttrs, encodeLeaseAttrs } from './lease.js';
import {
  type InvalidLeaseKey, type LeaseChange, type LeaseListing, type LeaseRecord, type LeaseStore, LeaseStoreUnavailableError,
  type LeaseWatchHandlers, type Stoppable, type WrittenLease, leaseKeyName, parseLeaseKey, parseStoredLease,
} from './lease-store.js';

interface Entry {
  value: string;
  leaseId: string | null;
  modRevision: number;
  createRevision: number;
}

interface ExpiringLease {
  ttlSeconds: number;
  expiresAt: number;
  keys: Set<string>;
  timer: TimerHandle | null;
}

type HistoryEvent = { revision: number; name: string; entry: Entry | null };

interface Watcher {
  /** The next revision to deliver. */
  next: number;
  handlers: LeaseWatchHandlers;
  stopped: boolean;
  connected: boolean;
}

export class MemoryLeaseStore implements LeaseStore {
  /** Key names under subnets/ (e.g. "198.19.5.0-24") → entry. */
  private readonly entries = new Map<string, Entry>();
  private readonly leases = new Map<string, ExpiringLease>();
  private readonly history: HistoryEvent[] = [];
  private readonly watchers = new Set<Watcher>();
  private readonly back = new Wakeup();
  private revision = 1;
  private compacted = 0;
  private nextLeaseId = 1;
  private available = true;
  /** Calls served, for tests that count round trips. */
  calls = 0;

  constructor(
    private readonly clock: Clock = systemClock,
    /** The prefix keys are reported under (what etcd's keys would be). */
    private readonly prefix = '/coreos.com/network/subnets/',
  ) {}

  // --- LeaseStore ---

  async listLeases(): Promise<LeaseListing> {
    this.serve('list leases');
    return this.listing(0);
  }

  async listLeasesCreatedAfter(revision: string): Promise<LeaseListing> {
    this.serve('list leases created after a revision');
    return this.listing(Number(revision));
  }

  async createLease(subnet: Ip4Net, attrs: LeaseAttrs, ttlSeconds: number, ipv6Subnet: Ip6Net | null = null): Promise<WrittenLease | null> {
    this.serve('create lease');
    const name = leaseKeyName(subnet, ipv6Subnet);
    if (this.entries.has(name)) return null;
    const leaseId = this.grant(ttlSeconds);
    this.write([{ name, value: encodeLeaseAttrs(attrs), leaseId }]);
    return { key: this.prefix + name, leaseId, revision: String(this.revision) };
  }

  async takeOverLease(existing: LeaseRecord, attrs: LeaseAttrs, ttlSeconds: number): Promise<WrittenLease | null> {
    this.serve('take over lease');
    const name = leaseKeyName(existing.subnet, existing.ipv6Subnet ?? null);
    const entry = this.entries.get(name);
    if (!entry || String(entry.modRevision) !== existing.modRevision) return null;
    const leaseId = existing.leaseId === null ? null : this.grant(ttlSeconds);
    this.write([{ name, value: encodeLeaseAttrs(attrs), leaseId }]);
    if (existing.leaseId && existing.leaseId !== leaseId) this.revoke(existing.leaseId);
    return { key: this.prefix + name, leaseId: leaseId ?? '', revision: String(this.revision) };
  }

  async renewLease(leaseId: string): Promise<number> {
    this.serve('renew lease');
    const lease = this.leases.get(leaseId);
    if (!lease) return 0;
    lease.expiresAt = this.clock.now() + lease.ttlSeconds * 1000;
    this.scheduleExpiry(leaseId, lease);
    return lease.ttlSeconds;
  }

  async deleteLease(subnet: Ip4Net, ipv6Subnet: Ip6Net | null = null): Promise<boolean> {
    this.serve('delete lease');
    return this.deleteKey(leaseKeyName(subnet, ipv6Subnet));
  }

  async deleteLeaseIf(key: string, modRevision: string): Promise<boolean> {
    this.serve('delete lease');
    if (!key.startsWith(this.prefix)) throw new Error(`${key} is not under ${this.prefix}`);
    const name = key.slice(this.prefix.length);
    const entry = this.entries.get(name);
    if (!entry || String(entry.modRevision) !== modRevision) return false;
    return this.deleteKey(name);
  }

  async watchLeases(fromRevision: string, handlers: LeaseWatchHandlers): Promise<Stoppable> {
    this.serve('watch leases');
    const watcher: Watcher = { next: Number(fromRevision), handlers, stopped: false, connected: true };
    this.watchers.add(watcher);
    this.deliverSoon(watcher);
    return {
      stop: async () => {
        watcher.stopped = true;
        this.watchers.delete(watcher);
      },
    };
  }

  /** Aborted when the store becomes available again (setAvailable(true)). */
  get recovered(): AbortSignal {
    return this.back.signal;
  }

  // --- what other writers (other nodes, an operator) do ---

  /** Writes any key under subnets/ with any value, as etcdctl would; `leaseId` binds it to an expiring lease. */
  put(name: string, value: string, leaseId: string | null = null): void {
    this.write([{ name, value, leaseId }]);
  }

  /** Writes many keys in one revision each, delivered to watches together (one watch response). */
  putMany(items: readonly { name: string; value: string; leaseId?: string | null }[]): void {
    this.write(items.map((i) => ({ name: i.name, value: i.value, leaseId: i.leaseId ?? null })));
  }

  deleteKey(name: string): boolean {
    if (!this.entries.has(name)) return false;
    this.write([{ name, value: null, leaseId: null }]);
    return true;
  }

  /** Grants an expiring lease, as another node would. */
  grant(ttlSeconds: number): string {
    const id = String(this.nextLeaseId++);
    const lease: ExpiringLease = { ttlSeconds, expiresAt: this.clock.now() + ttlSeconds * 1000, keys: new Set(), timer: null };
    this.leases.set(id, lease);
    this.scheduleExpiry(id, lease);
    return id;
  }

  /** Ends an expiring lease now: its keys are deleted. */
  revoke(leaseId: string): void {
    const lease = this.leases.get(leaseId);
    if (!lease) return;
    if (lease.timer) this.clock.clearTimeout(lease.timer);
    this.leases.delete(leaseId);
    this.write([...lease.keys].map((name) => ({ name, value: null, leaseId: null })));
  }

  /** Forgets history up to `revision`: watches that need it are reset, as etcd's are. */
  compact(revision = this.revision): void {
    this.compacted = revision;
    while (this.history.length > 0 && this.history[0]!.revision <= revision) this.history.shift();
    for (const w of this.watchers) this.deliverSoon(w);
  }

  /** While unavailable every call fails with LeaseStoreUnavailableError and watches pause. */
  setAvailable(available: boolean): void {
    this.available = available;
    for (const w of this.watchers) {
      if (!available && w.connected) {
        w.connected = false;
        w.handlers.onDisconnect?.('store unavailable');
      }
      if (available) this.deliverSoon(w);
    }
    if (available) this.back.wake();
  }

  get currentRevision(): number {
    return this.revision;
  }

  /** The raw value and etcd lease of a key, for assertions. */
  get(name: string): { value: string; leaseId: string | null } | undefined {
    const e = this.entries.get(name);
    return e ? { value: e.value, leaseId: e.leaseId } : undefined;
  }

  // --- internals ---

  private serve(op: string): void {
    this.calls++;
    if (!this.available) throw new LeaseStoreUnavailableError(op, new Error('store unavailable'));
  }

  /** Every key created after `createdAfter` (0: every key), in key order, at the current revision. */
  private listing(createdAfter: number): LeaseListing {
    const records: LeaseRecord[] = [];
    const invalid: InvalidLeaseKey[] = [];
    for (const [name, entry] of [...this.entries].sort(([a], [b]) => (a < b ? -1 : 1))) {
      if (entry.createRevision <= createdAfter) continue;
      const parsed = this.parse(name, entry);
      if ('code' in parsed) invalid.push(parsed);
      else records.push(parsed);
    }
    return { records, invalid, revision: String(this.revision) };
  }

  private parse(name: string, entry: Entry): LeaseRecord | InvalidLeaseKey {
    return parseStoredLease({
      key: this.prefix + name,
      name,
      value: entry.value,
      leaseId: entry.leaseId,
      modRevision: String(entry.modRevision),
      createRevision: String(entry.createRevision),
    });
  }

  /** Applies puts (value) and deletes (null), one revision each, and wakes the watches once. */
  private write(items: readonly { name: string; value: string | null; leaseId: string | null }[]): void {
    for (const { name, value, leaseId } of items) {
      const old = this.entries.get(name);
      if (value === null && !old) continue; // deleting nothing writes nothing, as in etcd
      if (old?.leaseId) this.leases.get(old.leaseId)?.keys.delete(name);
      this.revision++;
      let entry: Entry | null = null;
      if (value === null) {
        this.entries.delete(name);
      } else {
        entry = { value, leaseId, modRevision: this.revision, createRevision: old?.createRevision ?? this.revision };
        this.entries.set(name, entry);
        if (leaseId) this.leases.get(leaseId)?.keys.add(name);
      }
      this.history.push({ revision: this.revision, name, entry });
    }
    for (const w of this.watchers) this.deliverSoon(w);
  }

  private scheduleExpiry(id: string, lease: ExpiringLease): void {
    if (lease.timer) this.clock.clearTimeout(lease.timer);
    lease.timer = this.clock.setTimeout(() => {
      lease.timer = null;
      if (this.leases.get(id) === lease && this.clock.now() >= lease.expiresAt) this.revoke(id);
    }, Math.max(0, lease.expiresAt - this.clock.now()));
    lease.timer.unref?.();
  }

  /** Delivers what a watcher has not seen, asynchronously and in one call, as one watch response. */
  private deliverSoon(w: Watcher): void {
    queueMicrotask(() => {
      if (w.stopped || !this.available) return;
      if (!w.connected) {
        w.connected = true;
        w.handlers.onReconnect?.();
      }
      if (w.next <= this.compacted) {
        w.stopped = true;
        this.watchers.delete(w);
        w.handlers.onReset(`required revision ${w.next} has been compacted (compacted at ${this.compacted})`);
        return;
      }
      const changes: LeaseChange[] = [];
      for (const ev of this.history) {
        if (ev.revision < w.next) continue;
        changes.push(this.change(ev));
      }
      if (changes.length === 0) return;
      w.next = this.revision + 1;
      w.handlers.onChanges(changes, String(this.revision));
    });
  }

  private change(ev: HistoryEvent): LeaseChange {
    const revision = String(ev.revision);
    const key = this.prefix + ev.name;
    if (ev.entry === null) {
      const named = parseLeaseKey(key, ev.name, revision);
      return { type: 'delete', key, subnet: 'code' in named ? null : named.subnet, ipv6Subnet: 'code' in named ? null : named.ipv6Subnet, revision };
    }
    const parsed = this.parse(ev.name, ev.entry);
    return 'code' in parsed ? { type: 'invalid', revision, ...parsed } : { type: 'put', record: parsed };
  }
}
