// The lease manager: claims this node's subnet, keeps it renewed, notices when it is lost, and turns
// the subnets/ keys in etcd into lease added/removed events for the backend.
//
// The list that chose our subnet and the watch that follows start from one etcd revision, so a node
// that starts while others are claiming misses none of them. All work runs through one queue so
// events, renewals and re-claims never interleave.
import type { Logger } from '../common/log.js';
import { type EtcdRegistry, type InvalidLeaseKey, type LeaseChange, type LeaseRecord, type Stoppable, isConnectivityError } from '../etcd/registry.js';
import { type NetworkConfig, candidateSubnets } from './config.js';
import { Ip4Net, formatIp4 } from './ip4.js';
import { type Lease, type LeaseAttrs, type LeaseEvent, sameAttrs } from './lease.js';

export interface LeaseManagerOptions {
  registry: EtcdRegistry;
  network: NetworkConfig;
  /** What we publish in our lease. */
  attrs: LeaseAttrs;
  ttlSeconds: number;
  /** Renew this long before the etcd lease would run out. */
  renewMarginSeconds: number;
  /** The subnet recorded by a previous run (env file), tried before a random one. */
  previousSubnet: Ip4Net | null;
  log: Logger;
}

export interface LeaseManagerListener {
  /** Our lease is held: first claim, or a move to another subnet after ours was taken. */
  onOwnLease(lease: Lease, change: 'claimed' | 'moved'): Promise<void>;
  /** Remote leases changed. The first call carries every lease that existed at the claim. */
  onLeaseEvents(events: LeaseEvent[]): Promise<void>;
}

export class NetworkFullError extends Error {
  constructor(config: NetworkConfig, taken: number) {
    super(
      `no free subnet: all ${taken} /${config.subnetLen} subnets between ${formatIp4(config.subnetMin)} and ` +
        `${formatIp4(config.subnetMax)} in ${config.network} are leased or reserved`,
    );
    this.name = 'NetworkFullError';
  }
}

type Listing = Awaited<ReturnType<EtcdRegistry['listLeases']>>;

interface OwnLease {
  subnet: Ip4Net;
  /** null for a reservation, which has no etcd lease and never expires. */
  leaseId: string | null;
  expiration: Date | null;
  /** The etcd revision of our write: watch events on our key from before it are history, not news. */
  revision: bigint;
}

const MAX_CLAIM_ATTEMPTS = 100;
/** Retry policy for etcd work (the daemon's start-up uses it too): 0.5 s doubling up to 30 s. */
export const RETRY_MIN_MS = 500;
export const RETRY_MAX_MS = 30_000;
/** setTimeout's longest delay (2^31 - 1 ms, about 24.8 days); a longer one fires at once. */
const MAX_TIMER_MS = 2_147_483_647;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export class LeaseManager {
  private own: OwnLease | null = null;
  private readonly known = new Map<string, Lease>();
  private queue: Promise<void> = Promise.resolve();
  private watch: Stoppable | null = null;
  private renewTimer: NodeJS.Timeout | null = null;
  private listener: LeaseManagerListener | null = null;
  private stopped = false;
  private disconnected = false;
  private readonly counters = { claims: 0, reclaims: 0, renewals: 0, watchResets: 0, invalidLeases: 0 };

  constructor(private readonly opts: LeaseManagerOptions) {}

  get ownLease(): Lease | null {
    return this.own ? this.toLease(this.own) : null;
  }

  stats(): Record<string, number> {
    return { ...this.counters, remoteLeases: this.known.size };
  }

  /** Claims our subnet, hands the current leases to the listener, then follows changes. */
  async start(listener: LeaseManagerListener): Promise<Lease> {
    // start() may follow a failed start() and its stop() (e.g. the network was full): begin afresh.
    this.stopped = false;
    this.listener = listener;
    const { records, invalid, revision } = await this.claim(this.opts.previousSubnet, null);
    const own = this.own!;
    await listener.onOwnLease(this.toLease(own), 'claimed');
    const events = this.replaceKnown(records, invalid);
    await listener.onLeaseEvents(events);
    await this.startWatch(revision);
    this.scheduleRenewal();
    return this.toLease(own);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.renewTimer) clearTimeout(this.renewTimer);
    await this.watch?.stop();
    this.watch = null;
    await this.queue.catch(() => undefined);
  }

  private toLease(own: OwnLease): Lease {
    return { subnet: own.subnet, attrs: this.opts.attrs, expiration: own.expiration };
  }

  private get log(): Logger {
    return this.opts.log;
  }

  private enqueue(task: () => Promise<void>): void {
    this.queue = this.queue.then(task).catch((err: unknown) => {
      this.log.error({ err: (err as Error).message }, 'lease manager task failed');
    });
  }

  private inNetwork(subnet: Ip4Net): boolean {
    return this.opts.network.network.covers(subnet);
  }

  /** A remote lease we can hand to the backend; logs why not otherwise. */
  private usable(subnet: Ip4Net): boolean {
    if (!this.inNetwork(subnet)) {
      this.log.warn({ subnet: subnet.toString() }, 'skipping a lease outside the network');
      return false;
    }
    // A key such as <our net>-23 or -25 claims our pods' addresses: routing it away would cut them off.
    if (this.own && subnet.overlaps(this.own.subnet)) {
      this.counters.invalidLeases++;
      this.log.warn({ subnet: subnet.toString(), ownSubnet: this.own.subnet.toString() }, 'skipping a lease that overlaps our own subnet');
      return false;
    }
    return true;
  }

  /** A subnet we may lease under this config. */
  private isCandidate(subnet: Ip4Net): boolean {
    const c = this.opts.network;
    return subnet.prefixLen === c.subnetLen && subnet.ip >= c.subnetMin && subnet.ip <= c.subnetMax;
  }

  /**
   * Picks and claims a subnet: a lease that already carries our PublicIP, else `preferred` if it is
   * free, else a random free one. Retries from a fresh list when another node wins a race; the first
   * attempt uses `listing` when the caller has just read one.
   */
  private async claim(preferred: Ip4Net | null, avoid: Ip4Net | null, reclaiming = false, listing: Listing | null = null): Promise<Listing> {
    const { registry, attrs, ttlSeconds } = this.opts;
    for (let attempt = 0; attempt < MAX_CLAIM_ATTEMPTS; attempt++, listing = null) {
      listing ??= await registry.listLeases();
      const { records, invalid } = listing;
      const mine = records.find(
        (r) => r.attrs.publicIP === attrs.publicIP && this.isCandidate(r.subnet) && !(avoid && r.subnet.equals(avoid)),
      );
      if (mine) {
        const written = await registry.takeOverLease(mine, attrs, ttlSeconds);
        if (written !== null) {
          this.setOwn(mine.subnet, written.leaseId === '' ? null : written.leaseId, written.revision);
          this.log.info({ subnet: mine.subnet.toString(), reservation: written.leaseId === '' }, 'reusing the lease that carries our public IP');
          return listing;
        }
        continue;
      }
      const occupancy = new Occupancy(records, invalid, this.opts.network.subnetLen);
      const isFree = (sn: Ip4Net) => occupancy.isFree(sn) && !(avoid && sn.equals(avoid));
      let choice: Ip4Net | null = null;
      // Re-claiming the subnet we just held, only its own key can stand in the way: keys of another
      // length that overlap it were skipped while we held it, and do not win it by our loss.
      const preferredFree = preferred !== null && this.isCandidate(preferred) && (reclaiming ? !occupancy.hasKey(preferred) : isFree(preferred));
      if (preferredFree) {
        choice = preferred;
      } else {
        const free = [...candidateSubnets(this.opts.network)].filter(isFree);
        if (free.length === 0) throw new NetworkFullError(this.opts.network, records.length + invalid.length);
        choice = free[Math.floor(Math.random() * free.length)]!;
      }
      const written = await registry.createLease(choice, attrs, ttlSeconds);
      if (written !== null) {
        this.setOwn(choice, written.leaseId, written.revision);
        this.counters.claims++;
        this.log.info({ subnet: choice.toString(), attempt }, choice === preferred ? 'claimed our previous subnet' : 'claimed a new subnet');
        return listing;
      }
      // Lost a race for that subnet: another node created the key after our list. Try again.
      await sleep(Math.random() * 50);
    }
    throw new Error(`could not claim a subnet after ${MAX_CLAIM_ATTEMPTS} attempts (too much contention)`);
  }

  private setOwn(subnet: Ip4Net, leaseId: string | null, revision: string): void {
    const expiration = leaseId === null ? null : new Date(Date.now() + this.opts.ttlSeconds * 1000);
    this.own = { subnet, leaseId, expiration, revision: BigInt(revision) };
  }

  /** Rebuilds the known set from a full list and returns the differences as events. */
  private replaceKnown(records: LeaseRecord[], invalid: InvalidLeaseKey[]): LeaseEvent[] {
    for (const bad of invalid) this.warnInvalid(bad);
    const next = new Map<string, Lease>();
    for (const r of records) {
      if (this.own && r.subnet.equals(this.own.subnet)) continue;
      if (!this.usable(r.subnet)) continue;
      next.set(r.subnet.toKey(), { subnet: r.subnet, attrs: r.attrs, expiration: null });
    }
    const events: LeaseEvent[] = [];
    for (const [key, lease] of this.known) if (!next.has(key)) events.push({ type: 'removed', lease });
    for (const [key, lease] of next) {
      const prev = this.known.get(key);
      if (!prev || !sameAttrs(prev.attrs, lease.attrs)) events.push({ type: 'added', lease });
    }
    this.known.clear();
    for (const [key, lease] of next) this.known.set(key, lease);
    return events;
  }

  private warnInvalid(bad: InvalidLeaseKey): void {
    this.counters.invalidLeases++;
    this.log.warn({ key: bad.key, reason: bad.reason }, 'skipping a malformed lease');
  }

  private async startWatch(afterRevision: string): Promise<void> {
    const from = (BigInt(afterRevision) + 1n).toString();
    this.watch = await this.opts.registry.watchLeases(from, {
      onChanges: (changes) => this.enqueue(() => this.applyChanges(changes)),
      onReset: (reason) => this.enqueue(() => this.resync(reason)),
      // The registry logs the outage itself, once; these only trace the watch.
      onDisconnect: (reason) => {
        if (this.disconnected) return;
        this.disconnected = true;
        this.log.debug({ reason }, 'lost the etcd watch; it resumes from its last revision when etcd is back');
      },
      onReconnect: () => {
        if (!this.disconnected) return;
        this.disconnected = false;
        this.log.info('etcd watch resumed from its last revision');
      },
    });
  }

  private async applyChanges(changes: LeaseChange[]): Promise<void> {
    if (this.stopped) return;
    const events: LeaseEvent[] = [];
    let lostReason: string | null = null;
    const own = this.own;
    const isOwn = (subnet: Ip4Net | null) => own !== null && subnet !== null && subnet.equals(own.subnet);
    for (const change of changes) {
      // A change to our key from before our latest write (e.g. the deletion of the expired lease
      // we have since re-claimed, delivered late by a resumed watch) says nothing about the key now.
      const revision = change.type === 'put' ? change.record.modRevision : change.revision;
      if (own && isOwn(change.type === 'put' ? change.record.subnet : change.subnet) && BigInt(revision) <= own.revision) continue;
      if (change.type === 'invalid') {
        this.warnInvalid(change);
        if (isOwn(change.subnet)) lostReason = 'our key was overwritten with an invalid value';
        else if (change.subnet) this.forget(change.subnet, events);
      } else if (change.type === 'delete') {
        if (isOwn(change.subnet)) lostReason = 'our key was deleted';
        else this.forget(change.subnet, events);
      } else {
        const { subnet, attrs, leaseId } = change.record;
        if (isOwn(subnet)) {
          // Our own writes come back through the watch; anything else on our key means it was taken.
          if (!sameAttrs(attrs, this.opts.attrs) || leaseId !== own!.leaseId) lostReason = `our key was overwritten (PublicIP ${attrs.publicIP})`;
          continue;
        }
        if (!this.usable(subnet)) {
          this.forget(subnet, events);
          continue;
        }
        const key = subnet.toKey();
        const prev = this.known.get(key);
        if (prev && sameAttrs(prev.attrs, attrs)) continue;
        const lease: Lease = { subnet, attrs, expiration: null };
        this.known.set(key, lease);
        events.push({ type: 'added', lease });
      }
    }
    if (events.length > 0) await this.listener!.onLeaseEvents(events);
    if (lostReason) await this.reclaim(lostReason);
  }

  private forget(subnet: Ip4Net, events: LeaseEvent[]): void {
    const key = subnet.toKey();
    const lease = this.known.get(key);
    if (!lease) return;
    this.known.delete(key);
    events.push({ type: 'removed', lease });
  }

  /** Our lease vanished or was taken: claim the same subnet again if we can, another one if not. */
  private async reclaim(reason: string): Promise<void> {
    const old = this.own!;
    this.log.warn({ subnet: old.subnet.toString(), reason }, 'our subnet lease was lost; claiming again');
    this.counters.reclaims++;
    let listing: Listing | null = null;
    for (let delay = RETRY_MIN_MS; !this.stopped; delay = Math.min(delay * 2, RETRY_MAX_MS)) {
      try {
        const current = await this.opts.registry.listLeases();
        const holder = current.records.find((r) => r.subnet.equals(old.subnet));
        const occupiedByOther =
          (holder !== undefined && holder.attrs.publicIP !== this.opts.attrs.publicIP) ||
          current.invalid.some((bad) => bad.subnet?.equals(old.subnet));
        // The claim's first attempt chooses from this same list rather than reading another.
        listing = await this.claim(occupiedByOther ? null : old.subnet, occupiedByOther ? old.subnet : null, !occupiedByOther, current);
        break;
      } catch (err) {
        if (err instanceof NetworkFullError) this.log.error({ err: err.message }, 'cannot claim a subnet');
        else this.logRetry('re-claim failed; retrying', err, delay);
        await this.opts.registry.backoff(delay);
      }
    }
    if (this.stopped || !listing) return;
    this.scheduleRenewal();
    const own = this.own!;
    if (own.subnet.equals(old.subnet)) {
      this.log.info({ subnet: own.subnet.toString() }, 're-claimed our subnet');
    } else {
      this.log.error(
        { oldSubnet: old.subnet.toString(), newSubnet: own.subnet.toString() },
        'OUR SUBNET NOW BELONGS TO ANOTHER NODE: moved to a new subnet and rewrote the env file; pods on this node keep old addresses and must be restarted',
      );
      // Our new subnet may still be known as a peer whose lease ran out unseen: remove it from the
      // backend first, or the backend would route our own subnet into the overlay.
      const stale: LeaseEvent[] = [];
      this.forget(own.subnet, stale);
      if (stale.length > 0) await this.listener!.onLeaseEvents(stale);
      await this.listener!.onOwnLease(this.toLease(own), 'moved');
    }
    // The list the claim was made from brings the old subnet's new holder (and anything missed)
    // into the known set; the watch delivers whatever changed after it.
    const events = this.replaceKnown(listing.records, listing.invalid);
    if (events.length > 0) await this.listener!.onLeaseEvents(events);
  }

  /** Retry messages: debug while etcd is unreachable (the registry has said so once), warn otherwise. */
  private logRetry(msg: string, err: unknown, retryInMs: number): void {
    const fields = { err: (err as Error).message, retryInMs };
    if (isConnectivityError(err)) this.log.debug(fields, msg);
    else this.log.warn(fields, msg);
  }

  /** The watch could not continue (compaction, cancel): re-list, emit the differences, watch again. */
  private async resync(reason: string): Promise<void> {
    if (this.stopped) return;
    this.counters.watchResets++;
    this.log.warn({ reason }, 'lease watch reset; re-listing');
    await this.watch?.stop();
    this.watch = null;
    for (let delay = RETRY_MIN_MS; !this.stopped; delay = Math.min(delay * 2, RETRY_MAX_MS)) {
      try {
        const listing = await this.opts.registry.listLeases();
        const events = this.replaceKnown(listing.records, listing.invalid);
        if (events.length > 0) await this.listener!.onLeaseEvents(events);
        const own = this.own!;
        const holder = listing.records.find((r) => r.subnet.equals(own.subnet));
        const stillOurs = holder && sameAttrs(holder.attrs, this.opts.attrs) && holder.leaseId === own.leaseId;
        await this.startWatch(listing.revision);
        if (!stillOurs) await this.reclaim(holder ? 'our key was overwritten' : 'our key is gone');
        return;
      } catch (err) {
        this.logRetry('re-list failed; retrying', err, delay);
        await this.opts.registry.backoff(delay);
      }
    }
  }

  private scheduleRenewal(): void {
    if (this.renewTimer) clearTimeout(this.renewTimer);
    this.renewTimer = null;
    const own = this.own;
    if (this.stopped || !own || own.expiration === null) return;
    const dueIn = own.expiration.getTime() - Date.now() - this.opts.renewMarginSeconds * 1000;
    // Capped: with a TTL beyond setTimeout's range the timer would fire at once, and again after each renewal.
    this.renewTimer = setTimeout(() => this.enqueue(() => this.renew()), Math.min(Math.max(dueIn, 1000), MAX_TIMER_MS));
  }

  private async renew(): Promise<void> {
    const own = this.own;
    if (this.stopped || !own || own.leaseId === null) return;
    let failures = 0;
    while (!this.stopped && this.own === own) {
      try {
        const ttl = await this.opts.registry.renewLease(own.leaseId!);
        if (ttl <= 0) {
          await this.reclaim('our etcd lease expired');
          return;
        }
        own.expiration = new Date(Date.now() + ttl * 1000);
        this.counters.renewals++;
        this.log.info({ subnet: own.subnet.toString(), expiration: own.expiration.toISOString() }, 'renewed our lease');
        this.scheduleRenewal();
        return;
      } catch (err) {
        failures++;
        const left = own.expiration!.getTime() - Date.now();
        if (left <= 0) {
          await this.reclaim('our etcd lease expired while etcd was unreachable');
          return;
        }
        const delay = Math.min(RETRY_MIN_MS * 2 ** failures, RETRY_MAX_MS, Math.max(left / 2, RETRY_MIN_MS));
        this.logRetry('lease renewal failed; retrying', err, delay);
        // Wakes early when etcd is back, so the renewal follows its return within a moment.
        await this.opts.registry.backoff(delay);
      }
    }
  }
}

/** The subnets already held, for fast "is this one free?" checks while choosing. */
class Occupancy {
  private readonly sameLength = new Set<string>();
  /** Keys whose prefix length differs from the config's: checked for overlap one by one. */
  private readonly others: Ip4Net[] = [];

  constructor(records: LeaseRecord[], invalid: InvalidLeaseKey[], subnetLen: number) {
    const nets = [...records.map((r) => r.subnet), ...invalid.flatMap((bad) => (bad.subnet ? [bad.subnet] : []))];
    for (const net of nets) {
      if (net.prefixLen === subnetLen) this.sameLength.add(net.toKey());
      else this.others.push(net);
    }
  }

  /** A key for exactly this subnet exists (valid or not). */
  hasKey(subnet: Ip4Net): boolean {
    return this.sameLength.has(subnet.toKey());
  }

  isFree(subnet: Ip4Net): boolean {
    return !this.sameLength.has(subnet.toKey()) && !this.others.some((o) => o.overlaps(subnet));
  }
}
