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
//
// A claim protects the key it creates, not each subnet the key names: a node whose new key turns out
// to be the newer claimant of one of its subnets (contest.ts) gives way — deletes its key and claims
// again — quietly when nothing was written yet, loudly (the pods must be restarted) once the env file
// named the subnet.
import { type Clock, MAX_TIMER_MS, systemClock, type TimerHandle } from '../common/clock.js';
import type { Logger } from '../common/log.js';
import { leaseMetrics } from '../common/metrics.js';
import { Backoff, RETRY_JITTER, RETRY_MAX_MS, RETRY_MIN_MS, type RetryOptions, isAbort, retry } from '../common/retry.js';
import { SerialQueue } from '../common/serial-queue.js';
import { NetworkFullError, PublicIpInUseError, chooseSubnet } from './allocation.js';
import type { NetworkConfig } from './config.js';
import type { Ip4Net } from '../common/ip4.js';
import type { Ip6Net } from '../common/ip6.js';
import { type Contest, olderClaimants } from './contest.js';
import { KnownLeases, olderFirst } from './known-leases.js';
import { type Lease, type LeaseAttrs, type LeaseEvent, sameLeaseAttrs } from './lease.js';
import {
  type LeaseChange, type LeaseListing, type LeaseStore, LeaseStoreUnavailableError, type LeaseSubnets, type Stoppable, type WrittenLease,
  sameSubnets,
} from './lease-store.js';

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
  /** The whole key, as listed. */
  key: string;
  /** When the key was created: what the older-key rule compares (a take-over keeps it). */
  createRevision: string;
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
/**
 * Giving way to an older key noticed through the watch: the first time at once, then after a backoff
 * (RETRY_MIN_MS doubling to RETRY_MAX_MS) while older keys keep appearing, so that whatever keeps
 * contesting our subnets costs at most a delete and a claim every RETRY_MAX_MS. Calm again (the backoff
 * starts over) after this long without giving way.
 */
const GIVE_WAY_CALM_MS = 2 * RETRY_MAX_MS;

/** Another node wrote the key we chose after our listing, or an older key names a subnet of ours: choose again from a fresh listing. */
class LostRace extends Error {}

/** Whether a key we gave way with named a subnet of `previous` (the env file's) that `now` no longer has. */
function namesLostSubnet(gaveUp: LeaseSubnets, previous: { subnet: Ip4Net | null; ipv6Subnet: Ip6Net | null }, now: LeaseSubnets): boolean {
  const v4 = previous.subnet;
  const v6 = previous.ipv6Subnet;
  if (v4 && gaveUp.subnet.equals(v4) && !now.subnet.equals(v4)) return true;
  return !!v6 && !!gaveUp.ipv6Subnet?.equals(v6) && !now.ipv6Subnet?.equals(v6);
}

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
  /** Older keys known to take subnets of our current key (contest.ts), by key; emptied when our key changes. */
  private contesting = new Map<string, Contest>();
  private giveWayTimer: TimerHandle | null = null;
  /** A giveWay() is queued or waits on its timer. */
  private giveWayDue = false;
  private readonly giveWayBackoff: Backoff;
  private lastGaveWayAt: number | null = null;
  /** Keys we wrote and gave way with during the current claim, and why: at start, whether the env file named one. */
  private abandoned: (LeaseSubnets & { reason: string })[] = [];
  /** Contested reservations of ours already reported (own key → older key): said once, not per event. */
  private readonly toldReservation = new Set<string>();
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly counters = { claims: 0, reclaims: 0, renewals: 0, watchResets: 0, gaveWay: 0 };

  constructor(private readonly opts: LeaseManagerOptions) {
    this.clock = opts.clock ?? systemClock;
    this.random = opts.random ?? Math.random;
    this.known = new KnownLeases(opts.network, opts.log);
    this.giveWayBackoff = new Backoff(RETRY_MIN_MS, RETRY_MAX_MS, RETRY_JITTER, this.random);
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
    const previous = { subnet: this.opts.previousSubnet, ipv6Subnet: this.opts.previousIpv6Subnet ?? null };
    const listing = await this.claim(previous.subnet, null, null, previous.ipv6Subnet);
    const own = this.own!;
    await listener.onOwnLease(this.toLease(own), 'claimed');
    // A key given way with before anything was written here is nobody's business, unless it named a
    // subnet of the env file: pods of the previous run hold its addresses.
    const gaveUp = this.abandoned.find((k) => namesLostSubnet(k, previous, own));
    if (gaveUp && previous.subnet) this.sayMoved({ subnet: previous.subnet, ipv6Subnet: previous.ipv6Subnet }, gaveUp.reason);
    await listener.onLeaseEvents(this.replaceKnown(listing));
    await this.startWatch(listing.revision);
    this.scheduleRenewal();
    return this.toLease(own);
  }

  async stop(): Promise<void> {
    this.life.abort();
    if (this.renewTimer) this.clock.clearTimeout(this.renewTimer);
    this.renewTimer = null;
    if (this.giveWayTimer) this.clock.clearTimeout(this.giveWayTimer);
    this.giveWayTimer = null;
    this.giveWayDue = false;
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
    this.abandoned = [];
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
        this.setOwn(choice.record.subnet, ipv6Subnet, written, choice.record.createRevision);
        this.log.info(
          { subnet: choice.record.subnet.toString(), ...(ipv6Subnet ? { ipv6Subnet: ipv6Subnet.toString() } : {}), reservation: written.leaseId === '' },
          'reusing the lease that carries our public IP',
        );
        await this.checkClaim(current);
        return current;
      }
      const written = await store.createLease(choice.subnet, attrs, ttlSeconds, choice.ipv6Subnet);
      if (written === null) throw new LostRace(`another node claimed ${choice.subnet} first`);
      this.setOwn(choice.subnet, choice.ipv6Subnet, written, written.revision);
      this.counters.claims++;
      leaseMetrics.claims.inc();
      this.log.info(
        { subnet: choice.subnet.toString(), ...(choice.ipv6Subnet ? { ipv6Subnet: choice.ipv6Subnet.toString() } : {}), attempt: attempts - 1 },
        choice.preferred ? 'claimed our previous subnet' : 'claimed a new subnet',
      );
      await this.checkClaim(current);
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

  /** Our key is now `written` (created at `createRevision`): a create's own revision, a take-over's record's. */
  private setOwn(subnet: Ip4Net, ipv6Subnet: Ip6Net | null, written: WrittenLease, createRevision: string): void {
    const leaseId = written.leaseId === '' ? null : written.leaseId;
    const expiration = leaseId === null ? null : new Date(this.clock.now() + this.opts.ttlSeconds * 1000);
    this.own = { subnet, ipv6Subnet, key: written.key, createRevision, leaseId, expiration, revision: BigInt(written.revision) };
    this.contesting.clear();
    this.known.setOwn(subnet, ipv6Subnet, this.opts.attrs);
  }

  /**
   * After a claim: whether an older key takes a subnet of the key we just wrote (contest.ts). A key
   * older than ours that the listing we chose from lacked was created after it, so one small read
   * (keys created since) finds it; a key the listing held — possible only for a take-over, our key
   * from before — is confirmed by a fresh listing, as it may be gone. If contested, our key is deleted
   * unless it changed meanwhile, and the claim is lost like a race: the next attempt chooses from a
   * fresh listing, where the older key holds its subnets. A reservation is kept (reservationContested).
   */
  private async checkClaim(listing: LeaseListing): Promise<void> {
    const own = this.own!;
    const { store, network } = this.opts;
    const created = BigInt(own.createRevision) > BigInt(listing.revision);
    let fresh: LeaseListing | null = null;
    if (olderClaimants(own, listing.records, network).length > 0) fresh = await store.listLeases();
    else if (created) fresh = await store.listLeasesCreatedAfter(listing.revision);
    if (created && fresh) await this.checkPublicIpShared(own, fresh);
    const contest = fresh ? olderClaimants(own, fresh.records, network) : [];
    if (contest.length === 0) return;
    if (own.leaseId === null) {
      this.reservationContested(own, contest[0]!);
      return;
    }
    const first = contest[0]!;
    this.log.info(
      { key: own.key, olderKey: first.older.key, contested: first.subnets },
      'our key names a subnet of an older key (both claimed at once, or while we were down): every node uses the older one; deleting ours and claiming again',
    );
    const reason = `the older key ${first.older.key} holds ${first.subnets.join(' and ')}`;
    this.abandoned.push({ subnet: own.subnet, ipv6Subnet: own.ipv6Subnet, reason });
    this.counters.gaveWay++;
    // False when our key changed meanwhile: then it is not ours to keep either.
    await store.deleteLeaseIf(own.key, String(own.revision));
    throw new LostRace(reason);
  }

  /**
   * After creating a key: whether another node with our PublicIP created one first, after the listing we
   * chose from (two nodes given one --public-ip, started at the same instant: neither listing saw the
   * other's key). The later of two creators always finds the earlier here, as its read follows its own
   * create. The older key's node keeps running; ours deletes its key unless it changed meanwhile and
   * takes no lease while the other holds one, as when its listing shows the other from the start.
   */
  private async checkPublicIpShared(own: OwnLease, fresh: LeaseListing): Promise<void> {
    const older = fresh.records
      .filter((r) => r.key !== own.key && r.attrs.publicIP === this.opts.attrs.publicIP && !this.isOurs(r.attrs) && olderFirst(r, own) < 0)
      .sort(olderFirst)[0];
    if (!older) return;
    this.log.info(
      { key: own.key, olderKey: older.key, publicIP: older.attrs.publicIP },
      'another node with our public IP created its key just before ours: deleting ours; taking no lease while it holds one',
    );
    this.counters.gaveWay++;
    await this.opts.store.deleteLeaseIf(own.key, String(own.revision));
    throw new PublicIpInUseError(this.opts.attrs.publicIP, older, this.opts.attrs.nodeIdentity ?? '');
  }

  /**
   * Our key is a reservation (an operator's, bound to no etcd lease) that an older key contests: every
   * other node refuses it for that subnet, but deleting an operator's reservation is not ours to do,
   * and the next start would take it again. Said once per pair of keys, as an error naming both.
   */
  private reservationContested(own: OwnLease, contest: Contest): void {
    const told = `${own.key} ${contest.older.key}`;
    if (this.toldReservation.has(told)) return;
    this.toldReservation.add(told);
    this.log.error(
      { key: own.key, olderKey: contest.older.key, contested: contest.subnets },
      'our lease is a reservation naming a subnet of an older key: every other node uses the older key for it; ' +
        'kept as the operator wrote it — release one of the two keys (flannelctl lease delete)',
    );
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
    for (const change of others) this.noteContest(change);
    if (lostReason) await this.reclaim(lostReason);
    else if (this.contesting.size > 0) this.scheduleGiveWay();
  }

  /** Keeps `contesting` up to date with a watched change of another key. */
  private noteContest(change: LeaseChange): void {
    const key = change.type === 'put' ? change.record.key : change.key;
    const [contest] = change.type === 'put' ? olderClaimants(this.own!, [change.record], this.opts.network) : [];
    if (contest) this.contesting.set(key, contest);
    else this.contesting.delete(key);
  }

  /** Gives way to the older keys in `contesting`: at once the first time, then with backoff (GIVE_WAY_CALM_MS). */
  private scheduleGiveWay(): void {
    if (this.giveWayDue || this.stopped) return;
    this.giveWayDue = true;
    const now = this.clock.now();
    if (this.lastGaveWayAt === null || now - this.lastGaveWayAt >= GIVE_WAY_CALM_MS) {
      this.giveWayBackoff.reset();
      this.enqueue(() => this.giveWay());
      return;
    }
    this.giveWayTimer = this.clock.setTimeout(() => {
      this.giveWayTimer = null;
      this.enqueue(() => this.giveWay());
    }, this.giveWayBackoff.next());
    this.giveWayTimer.unref?.();
  }

  /**
   * An older key names a subnet of ours, noticed after we claimed (a key turned valid, or one a reset
   * listing brought): every node uses the older key, so ours is deleted (unless it changed meanwhile)
   * and we claim again avoiding what it holds. Loud, as the env file named the subnet we leave.
   */
  private async giveWay(): Promise<void> {
    this.giveWayDue = false;
    const own = this.own;
    if (this.stopped || !own) return;
    const [first] = [...this.contesting.values()].sort((a, b) => olderFirst(a.older, b.older));
    if (!first) return;
    if (own.leaseId === null) {
      this.reservationContested(own, first);
      return;
    }
    this.lastGaveWayAt = this.clock.now();
    this.counters.gaveWay++;
    this.log.warn(
      { key: own.key, olderKey: first.older.key, contested: first.subnets },
      'an older key names a subnet of ours: every node uses the older one; deleting our key and claiming again',
    );
    try {
      await retry(() => this.opts.store.deleteLeaseIf(own.key, String(own.revision)), this.retrying('deleting our key failed; retrying'));
    } catch (err) {
      if (isAbort(err)) return;
      throw err;
    }
    await this.claimAgain(own, `the older key ${first.older.key} holds ${first.subnets.join(' and ')}`);
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
    await this.claimAgain(old, reason);
  }

  /** Claims again after losing or giving up `old`: its subnets if they are free, others if not (see reclaim). */
  private async claimAgain(old: OwnLease, reason: string): Promise<void> {
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
      this.sayMoved(old, reason);
    }
    // The listing the claim was made from brings the old subnet's new holder (and anything missed)
    // into the known set; the watch delivers whatever changed after it.
    const events = this.replaceKnown(listing);
    if (events.length > 0) await this.listener!.onLeaseEvents(events);
  }

  /**
   * The loud line of a move away from `old`, said once the env file names the new subnets, so that what
   * it says is already true: local pods keep addresses of the subnets we left.
   */
  private sayMoved(old: LeaseSubnets, reason: string): void {
    const own = this.own!;
    const v6 = old.ipv6Subnet || own.ipv6Subnet ? { oldIpv6Subnet: old.ipv6Subnet?.toString() ?? null, newIpv6Subnet: own.ipv6Subnet?.toString() ?? null } : {};
    this.log.error(
      { oldSubnet: old.subnet.toString(), newSubnet: own.subnet.toString(), ...v6, reason },
      'OUR SUBNET NOW BELONGS TO ANOTHER NODE: moved to a new subnet and rewrote the env file; pods on this node keep old addresses and must be restarted',
    );
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
        this.contesting = new Map(olderClaimants(own, listing.records, this.opts.network).map((c) => [c.older.key, c]));
        await this.startWatch(listing.revision);
        return stillOurs ? null : holder ? 'our key was overwritten' : 'our key is gone';
      }, this.retrying('listing again failed; retrying'));
    } catch (err) {
      if (isAbort(err)) return;
      throw err;
    }
    if (lost) await this.reclaim(lost);
    else if (this.contesting.size > 0) this.scheduleGiveWay();
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
