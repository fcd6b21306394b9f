// The lease manager: the lifecycle that ties a LeaseStore, the choice of a subnet (allocation.ts) and
// the known remote leases (known-leases.ts) together. It claims this node's subnet, keeps it renewed,
// notices when it is lost and claims again, and turns the store's listings and watched changes into
// lease added/removed events for the backend.
//
// The list that chose our subnet and the watch that follows start from one revision, so a node that
// starts while others are claiming misses none of them. All work runs through one queue so events,
// renewals and re-claims never interleave. Watched changes wait for that queue folded per key (the
// latest value of each), so what waits is bounded by the number of distinct keys, never by the
// event rate: a key rewritten thousands of times a second costs one entry, and a new lease behind
// it waits for one pass, not for every change queued before it. Every retry loop is retry() with
// the store's wake-up, stopped through one AbortSignal. Time and randomness are injected (tests
// move the clock).
import { type Clock, MAX_TIMER_MS, systemClock, type TimerHandle } from '../common/clock.js';
import type { Logger } from '../common/log.js';
import { leaseMetrics } from '../common/metrics.js';
import { Backoff, RETRY_JITTER, RETRY_MAX_MS, RETRY_MIN_MS, type RetryOptions, isAbort, retry } from '../common/retry.js';
import { SerialQueue } from '../common/serial-queue.js';
import { NetworkFullError, PublicIpInUseError, chooseSubnet } from './allocation.js';
import type { NetworkConfig } from './config.js';
import type { Ip4Net } from '../common/ip4.js';
import type { Ip6Net } from '../common/ip6.js';
import { KnownLeases } from './known-leases.js';
import { type Lease, type LeaseAttrs, type LeaseEvent, sameLeaseAttrs } from './lease.js';
import { type LeaseChange, type LeaseListing, type LeaseStore, LeaseStoreUnavailableError, type Stoppable, sameSubnets } from './lease-store.js';

export { NetworkFullError, PublicIpInUseError } from './allocation.js';

export interface LeaseManagerOptions {
  store: LeaseStore;
  network: NetworkConfig;
  /** What we publish in our lease. */
  attrs: LeaseAttrs;
  ttlSeconds: number;
  /** Renew this long before the lease would run out. */
  renewMarginSeconds: number;
  /** The subnet recorded by a previous run (env file), tried before a random one. */
  previousSubnet: Ip4Net | null;
  /** The same for the IPv6 subnet (dual stack). */
  previousIpv6Subnet?: Ip6Net | null;
  log: Logger;
  clock?: Clock;
  /** A number in [0, 1): picks among free subnets and spreads retries after a lost race. */
  random?: () => number;
}

export interface LeaseManagerListener {
  /** Our lease is held: first claim, or a move to another subnet after ours was taken. */
  onOwnLease(lease: Lease, change: 'claimed' | 'moved'): Promise<void>;
  /** Remote leases changed. The first call carries every lease that existed at the claim. */
  onLeaseEvents(events: LeaseEvent[]): Promise<void>;
}

interface OwnLease {
  subnet: Ip4Net;
  ipv6Subnet: Ip6Net | null;
  /** null for a reservation, which has no expiring lease and never expires. */
  leaseId: string | null;
  expiration: Date | null;
  /** The revision of our write: watched changes to our key from before it are history, not news. */
  revision: bigint;
}

const MAX_CLAIM_ATTEMPTS = 100;
/** Retries after a lost race for a subnet: spread over 0 – 2× this, doubling up to RACE_RETRY_MAX_MS. */
const RACE_RETRY_MS = 25;
const RACE_RETRY_MAX_MS = 400;

/** Another node wrote the key we chose after our listing: choose again from a fresh listing. */
class LostRace extends Error {}

export class LeaseManager {
  private own: OwnLease | null = null;
  private readonly known: KnownLeases;
  private readonly queue = new SerialQueue();
  private watch: Stoppable | null = null;
  private renewTimer: TimerHandle | null = null;
  private listener: LeaseManagerListener | null = null;
  /** Aborted by stop(): ends every retry and wait. Each start() gets a fresh one. */
  private life = new AbortController();
  /** Watched changes not applied yet, the latest per key: one entry per distinct key at most. */
  private pending = new Map<string, LeaseChange>();
  /** A task that applies `pending` is queued and has not begun. */
  private drainQueued = false;
  /** The revision of the listing the known set was last rebuilt from: changes up to it are in it. */
  private listedAt = 0n;
  private disconnected = false;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly counters = { claims: 0, reclaims: 0, renewals: 0, watchResets: 0 };

  constructor(private readonly opts: LeaseManagerOptions) {
    this.clock = opts.clock ?? systemClock;
    this.random = opts.random ?? Math.random;
    this.known = new KnownLeases(opts.network, opts.log);
  }

  get ownLease(): Lease | null {
    return this.own ? this.toLease(this.own) : null;
  }

  stats(): Record<string, number> {
    let invalidLeases = 0;
    for (const n of this.known.refusedByReason.values()) invalidLeases += n;
    return { ...this.counters, invalidLeases, remoteLeases: this.known.size, pendingChanges: this.pending.size };
  }

  /** Refused leases since start, by reason. */
  invalidLeasesByReason(): Record<string, number> {
    return Object.fromEntries(this.known.refusedByReason);
  }

  /** Claims our subnet, hands the current leases to the listener, then follows changes. */
  async start(listener: LeaseManagerListener): Promise<Lease> {
    // start() may follow a failed start() and its stop() (e.g. the network was full): begin afresh.
    this.life = new AbortController();
    this.pending.clear();
    this.listener = listener;
    const listing = await this.claim(this.opts.previousSubnet, null, null, this.opts.previousIpv6Subnet ?? null);
    const own = this.own!;
    await listener.onOwnLease(this.toLease(own), 'claimed');
    await listener.onLeaseEvents(this.replaceKnown(listing));
    await this.startWatch(listing.revision);
    this.scheduleRenewal();
    return this.toLease(own);
  }

  async stop(): Promise<void> {
    this.life.abort();
    if (this.renewTimer) this.clock.clearTimeout(this.renewTimer);
    this.renewTimer = null;
    await this.watch?.stop();
    this.watch = null;
    await this.queue.idle();
  }

  private get stopped(): boolean {
    return this.life.signal.aborted;
  }

  private toLease(own: OwnLease): Lease {
    return { subnet: own.subnet, ...(own.ipv6Subnet ? { ipv6Subnet: own.ipv6Subnet } : {}), attrs: this.opts.attrs, expiration: own.expiration };
  }

  private get log(): Logger {
    return this.opts.log;
  }

  private enqueue(task: () => Promise<void>): void {
    this.queue.run(task).catch((err: unknown) => {
      this.log.error({ err: (err as Error).message }, 'lease manager task failed');
    });
  }

  /** The retry policy of every loop here: jittered backoff, the store's wake-up, our clock, our stop. */
  private retrying(msg: string, onError?: (err: unknown) => boolean): RetryOptions {
    return {
      signal: this.life.signal,
      clock: this.clock,
      backoff: new Backoff(RETRY_MIN_MS, RETRY_MAX_MS, RETRY_JITTER, this.random),
      wakeup: () => this.opts.store.recovered,
      onError: (err, retryInMs) => {
        if (!onError?.(err)) this.logRetry(msg, err, retryInMs);
      },
    };
  }

  /**
   * Picks and claims a subnet (see chooseSubnet). Retries from a fresh listing when another node wins
   * a race; the first attempt uses `listing` when the caller has just read one. Other failures (the
   * store unreachable, a full network, our PublicIP in use by another node) are the caller's to retry.
   * `unmarkedIsOurs`: whether a lease with our PublicIP and no node identity is ours (at start).
   */
  private async claim(
    preferred: Ip4Net | null,
    avoid: Ip4Net | null,
    listing: LeaseListing | null = null,
    preferredIpv6: Ip6Net | null = null,
    unmarkedIsOurs = true,
  ): Promise<LeaseListing> {
    const { store, attrs, ttlSeconds, network } = this.opts;
    let attempts = 0;
    let given = listing;
    const attempt = async (): Promise<LeaseListing> => {
      attempts++;
      const current = given ?? (await store.listLeases());
      given = null;
      const choice = chooseSubnet(current, {
        network, publicIP: attrs.publicIP, nodeIdentity: attrs.nodeIdentity ?? null, unmarkedIsOurs, preferred, preferredIpv6, avoid, random: this.random,
      });
      if (choice.kind === 'take-over') {
        const written = await store.takeOverLease(choice.record, attrs, ttlSeconds);
        if (written === null) throw new LostRace('our lease changed since it was listed');
        const ipv6Subnet = choice.record.ipv6Subnet ?? null;
        this.setOwn(choice.record.subnet, ipv6Subnet, written.leaseId === '' ? null : written.leaseId, written.revision);
        this.log.info(
          { subnet: choice.record.subnet.toString(), ...(ipv6Subnet ? { ipv6Subnet: ipv6Subnet.toString() } : {}), reservation: written.leaseId === '' },
          'reusing the lease that carries our public IP',
        );
        return current;
      }
      const written = await store.createLease(choice.subnet, attrs, ttlSeconds, choice.ipv6Subnet);
      if (written === null) throw new LostRace(`another node claimed ${choice.subnet} first`);
      this.setOwn(choice.subnet, choice.ipv6Subnet, written.leaseId, written.revision);
      this.counters.claims++;
      leaseMetrics.claims.inc();
      this.log.info(
        { subnet: choice.subnet.toString(), ...(choice.ipv6Subnet ? { ipv6Subnet: choice.ipv6Subnet.toString() } : {}), attempt: attempts - 1 },
        choice.preferred ? 'claimed our previous subnet' : 'claimed a new subnet',
      );
      return current;
    };
    try {
      return await retry(attempt, {
        signal: this.life.signal,
        clock: this.clock,
        backoff: new Backoff(RACE_RETRY_MS, RACE_RETRY_MAX_MS, 1, this.random),
        retryIf: (err) => err instanceof LostRace && attempts < MAX_CLAIM_ATTEMPTS,
      });
    } catch (err) {
      if (err instanceof LostRace) throw new Error(`could not claim a subnet after ${MAX_CLAIM_ATTEMPTS} attempts (too much contention)`);
      throw err;
    }
  }

  private setOwn(subnet: Ip4Net, ipv6Subnet: Ip6Net | null, leaseId: string | null, revision: string): void {
    const expiration = leaseId === null ? null : new Date(this.clock.now() + this.opts.ttlSeconds * 1000);
    this.own = { subnet, ipv6Subnet, leaseId, expiration, revision: BigInt(revision) };
    this.known.setOwn(subnet, ipv6Subnet, this.opts.attrs);
  }

  /** Rebuilds the known set from a listing; watched changes up to its revision are in it already. */
  private replaceKnown(listing: LeaseListing): LeaseEvent[] {
    this.listedAt = BigInt(listing.revision);
    return this.known.replaceAll(listing);
  }

  private async startWatch(afterRevision: string): Promise<void> {
    const from = (BigInt(afterRevision) + 1n).toString();
    this.watch = await this.opts.store.watchLeases(from, {
      onChanges: (changes) => this.take(changes),
      onReset: (reason) => this.enqueue(() => this.resync(reason)),
      // The store logs an outage itself, once; these only trace the watch.
      onDisconnect: (reason) => {
        if (this.disconnected) return;
        this.disconnected = true;
        this.log.debug({ reason }, 'lost the lease watch; it resumes from its last revision when the store is back');
      },
      onReconnect: () => {
        if (!this.disconnected) return;
        this.disconnected = false;
        this.log.info('lease watch resumed from its last revision');
      },
    });
  }

  /**
   * Watched changes join those waiting, folded per key (a later change of a key replaces the earlier
   * one: only the latest value matters), and one queued task applies them all.
   */
  private take(changes: readonly LeaseChange[]): void {
    for (const change of changes) this.pending.set(change.type === 'put' ? change.record.key : change.key, change);
    if (this.drainQueued) return;
    this.drainQueued = true;
    this.enqueue(() => {
      this.drainQueued = false;
      return this.applyPending();
    });
  }

  private async applyPending(): Promise<void> {
    const changes = this.pending;
    this.pending = new Map();
    if (this.stopped || changes.size === 0) return;
    const own = this.own!;
    const others: LeaseChange[] = [];
    let lostReason: string | null = null;
    for (const change of changes.values()) {
      const revision = BigInt(change.type === 'put' ? change.record.modRevision : change.revision);
      // Already in the listing the known set was rebuilt from (a re-claim or a reset listed after it).
      if (revision <= this.listedAt) continue;
      const named = change.type === 'put' ? change.record : change.subnet ? { subnet: change.subnet, ipv6Subnet: change.ipv6Subnet ?? null } : null;
      if (named === null || !sameSubnets(named, own)) {
        others.push(change);
        continue;
      }
      // A change to our key from before our latest write (e.g. the deletion of the expired lease we
      // have since re-claimed, delivered late by a resumed watch) says nothing about the key now.
      if (revision <= own.revision) continue;
      if (change.type === 'invalid') lostReason = 'our key was overwritten with an invalid value';
      else if (change.type === 'delete') lostReason = 'our key was deleted';
      // Our own writes come back through the watch; anything else on our key means it was taken.
      else if (!sameLeaseAttrs(change.record.attrs, this.opts.attrs) || change.record.leaseId !== own.leaseId) {
        lostReason = `our key was overwritten (PublicIP ${change.record.attrs.publicIP})`;
      }
    }
    const events = this.known.apply(others);
    if (events.length > 0) await this.listener!.onLeaseEvents(events);
    if (lostReason) await this.reclaim(lostReason);
  }

  /** A lease written by us: our PublicIP and, when we have one, our node identity. */
  private isOurs(attrs: LeaseAttrs): boolean {
    const identity = this.opts.attrs.nodeIdentity ?? null;
    return attrs.publicIP === this.opts.attrs.publicIP && (identity === null || attrs.nodeIdentity === identity);
  }

  /**
   * Our lease vanished or was taken: claim the same subnet again if we can, another one if not. A
   * lease now carrying our PublicIP is ours only with our identity: one without was written by
   * another node, which we never take a subnet from (see PublicIpInUseError).
   */
  private async reclaim(reason: string): Promise<void> {
    const old = this.own!;
    this.log.warn({ subnet: old.subnet.toString(), reason }, 'our subnet lease was lost; claiming again');
    this.counters.reclaims++;
    leaseMetrics.reclaims.inc();
    let listing: LeaseListing;
    try {
      listing = await retry(async () => {
        const current = await this.opts.store.listLeases();
        const holder = current.records.find((r) => sameSubnets(r, old));
        const occupiedByOther =
          (holder !== undefined && !this.isOurs(holder.attrs)) ||
          current.invalid.some((bad) => bad.subnet !== null && sameSubnets({ subnet: bad.subnet, ipv6Subnet: bad.ipv6Subnet ?? null }, old));
        // The claim's first attempt chooses from this same listing rather than reading another.
        return this.claim(occupiedByOther ? null : old.subnet, occupiedByOther ? old.subnet : null, current, occupiedByOther ? null : old.ipv6Subnet, false);
      }, this.retrying('re-claim failed; retrying', (err) => {
        if (!(err instanceof NetworkFullError || err instanceof PublicIpInUseError)) return false;
        this.log.error({ err: err.message }, 'cannot claim a subnet');
        return true;
      }));
    } catch (err) {
      if (isAbort(err)) return;
      throw err;
    }
    this.scheduleRenewal();
    const own = this.own!;
    if (sameSubnets(own, old)) {
      this.log.info({ subnet: own.subnet.toString() }, 're-claimed our subnet');
    } else {
      // Our new subnet may still be known as a peer whose lease ran out unseen: remove it from the
      // backend first, or the backend would route our own subnet into the overlay.
      const stale = this.known.redecide();
      if (stale.length > 0) await this.listener!.onLeaseEvents(stale);
      await this.listener!.onOwnLease(this.toLease(own), 'moved');
      // Said once the env file names the new subnet, so that what the line says is already true.
      this.log.error(
        { oldSubnet: old.subnet.toString(), newSubnet: own.subnet.toString() },
        'OUR SUBNET NOW BELONGS TO ANOTHER NODE: moved to a new subnet and rewrote the env file; pods on this node keep old addresses and must be restarted',
      );
    }
    // The listing the claim was made from brings the old subnet's new holder (and anything missed)
    // into the known set; the watch delivers whatever changed after it.
    const events = this.replaceKnown(listing);
    if (events.length > 0) await this.listener!.onLeaseEvents(events);
  }

  /** Retry messages: debug while the store is unreachable (it has said so once), warn otherwise. */
  private logRetry(msg: string, err: unknown, retryInMs: number): void {
    const fields = { err: (err as Error).message, retryInMs };
    if (err instanceof LeaseStoreUnavailableError) this.log.debug(fields, msg);
    else this.log.warn(fields, msg);
  }

  /** The watch could not continue (compaction, cancel): list again, emit the differences, watch again. */
  private async resync(reason: string): Promise<void> {
    if (this.stopped) return;
    this.counters.watchResets++;
    leaseMetrics.watchResets.inc();
    this.log.warn({ reason }, 'lease watch reset; re-listing');
    await this.watch?.stop();
    this.watch = null;
    let lost: string | null;
    try {
      lost = await retry(async () => {
        const listing = await this.opts.store.listLeases();
        const events = this.replaceKnown(listing);
        if (events.length > 0) await this.listener!.onLeaseEvents(events);
        const own = this.own!;
        const holder = listing.records.find((r) => sameSubnets(r, own));
        const stillOurs = holder && sameLeaseAttrs(holder.attrs, this.opts.attrs) && holder.leaseId === own.leaseId;
        await this.startWatch(listing.revision);
        return stillOurs ? null : holder ? 'our key was overwritten' : 'our key is gone';
      }, this.retrying('listing again failed; retrying'));
    } catch (err) {
      if (isAbort(err)) return;
      throw err;
    }
    if (lost) await this.reclaim(lost);
  }

  private scheduleRenewal(): void {
    if (this.renewTimer) this.clock.clearTimeout(this.renewTimer);
    this.renewTimer = null;
    const own = this.own;
    if (this.stopped || !own || own.expiration === null) return;
    const dueIn = own.expiration.getTime() - this.clock.now() - this.opts.renewMarginSeconds * 1000;
    // Capped: with a TTL beyond setTimeout's range the timer would fire at once, and again after each renewal.
    this.renewTimer = this.clock.setTimeout(() => this.enqueue(() => this.renew()), Math.min(Math.max(dueIn, 1000), MAX_TIMER_MS));
    this.renewTimer.unref?.();
  }

  /**
   * Renews our etcd lease, retrying failures with backoff — never longer than half the time the lease
   * has left, and at once when the store answers again — until it would run out: then re-claims.
   */
  private async renew(): Promise<void> {
    const own = this.own;
    if (this.stopped || !own || own.leaseId === null || own.expiration === null) return;
    const left = (): number => own.expiration!.getTime() - this.clock.now();
    let ttl: number;
    try {
      ttl = await retry(() => this.opts.store.renewLease(own.leaseId!), {
        ...this.retrying('lease renewal failed; retrying', () => {
          leaseMetrics.renewalFailures.inc();
          return false;
        }),
        retryIf: () => left() > 0,
        maxDelayMs: () => Math.max(left() / 2, RETRY_MIN_MS),
      });
    } catch (err) {
      if (isAbort(err)) return;
      leaseMetrics.renewalFailures.inc();
      await this.reclaim('our lease expired while the store was unreachable');
      return;
    }
    if (ttl <= 0) {
      await this.reclaim('our lease expired');
      return;
    }
    own.expiration = new Date(this.clock.now() + ttl * 1000);
    this.counters.renewals++;
    leaseMetrics.renewals.inc();
    this.log.info({ subnet: own.subnet.toString(), expiration: own.expiration.toISOString() }, 'renewed our lease');
    this.scheduleRenewal();
  }
}
