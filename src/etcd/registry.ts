// The etcd v3 registry: the only module that knows how flannel's data is laid out in etcd.
// <prefix>/config holds the network config; <prefix>/subnets/<a.b.c.d>-<len> holds one lease each,
// bound to an etcd lease (or to none: a reservation).
import { Etcd3, type IKeyValue, type IOptions, type IWatchResponse } from 'etcd3';
import type { Logger } from '../common/log.js';
import { Ip4Net } from '../subnet/ip4.js';
import { type LeaseAttrs, decodeLeaseAttrs, encodeLeaseAttrs } from '../subnet/lease.js';
import {
  CALL_TIMEOUT_MS, type EtcdConnectionOptions, EtcdTimeoutError, RECONNECT_MAX_MS, RECONNECT_MIN_MS, Reachability, buildClientOptions,
} from './connection.js';
import { ResumableWatch } from './resumable-watch.js';

export { type EtcdConnectionOptions, etcdErrorFields, isConnectivityError } from './connection.js';

/** A lease as read from etcd. */
export interface LeaseRecord {
  subnet: Ip4Net;
  attrs: LeaseAttrs;
  /** etcd lease ID (decimal string), or null for a reservation. */
  leaseId: string | null;
  modRevision: string;
}

/** A key under subnets/ whose name or value we could not use. */
export interface InvalidLeaseKey {
  key: string;
  reason: string;
  /** The subnet named by the key, when the key itself is well-formed (the key still occupies it). */
  subnet: Ip4Net | null;
}

export type LeaseChange =
  | { type: 'put'; record: LeaseRecord }
  /** `revision` is the revision of the deletion. */
  | { type: 'delete'; subnet: Ip4Net; revision: string }
  | ({ type: 'invalid'; revision: string } & InvalidLeaseKey);

export interface LeaseWatchHandlers {
  onChanges(changes: LeaseChange[], revision: string): void;
  /** The watch can't continue from its revision (e.g. compacted): the caller must re-list. */
  onReset(reason: string): void;
  onDisconnect?(reason: string): void;
  onReconnect?(): void;
}

export interface Stoppable {
  stop(): Promise<void>;
}

/** A key written by us: the etcd lease it is bound to ('' for none) and the revision of the write. */
export interface WrittenLease {
  leaseId: string;
  revision: string;
}

/** etcd lease IDs are int64; a zero or absent ID means no lease. */
function leaseIdOf(kv: IKeyValue): string | null {
  return kv.lease && kv.lease !== '0' ? String(kv.lease) : null;
}

/** A probe needs no long deadline: a healthy etcd answers a read in milliseconds. */
const PROBE_TIMEOUT_MS = 2_000;

export class EtcdRegistry {
  private readonly options: IOptions;
  /** Replaced when etcd comes back after a failure (see reconnected()). */
  private client: Etcd3;
  /** Replaced clients, closed once the calls still running on them are over. */
  private readonly retired = new Set<Etcd3>();
  /** Each watch runs on clients of its own (see ResumableWatch). */
  private readonly watches = new Set<ResumableWatch>();
  private readonly configKey: string;
  private readonly subnetsPrefix: string;
  private readonly reach: Reachability;

  constructor(
    opts: EtcdConnectionOptions,
    private readonly log: Logger,
  ) {
    this.options = buildClientOptions(opts);
    this.client = new Etcd3(this.options);
    const prefix = opts.prefix.replace(/\/+$/, '');
    this.configKey = `${prefix}/config`;
    this.subnetsPrefix = `${prefix}/subnets/`;
    this.reach = new Reachability(log, opts.endpoints, () => this.probe(), () => this.reconnected());
  }

  /**
   * Can etcd serve us again? A linearizable read, so that a cluster without quorum (which can
   * renew no lease) counts as unreachable, on a client of its own: a fresh connection, and no
   * circuit breaker left open by earlier failures.
   */
  private async probe(): Promise<void> {
    const client = new Etcd3(this.options);
    try {
      await client.get(this.configKey).options({ deadline: Date.now() + PROBE_TIMEOUT_MS }).exec();
    } finally {
      client.close();
    }
  }

  /**
   * etcd answers again after a failure. Connections made while it did not may still sit in a TCP
   * connect into the black hole, and the client's circuit breaker may stay open for seconds: new
   * calls go to a fresh client (calls in flight on the old one finish or time out first), and
   * watches reconnect at once.
   */
  private reconnected(): void {
    const old = this.client;
    this.client = new Etcd3(this.options);
    this.retired.add(old);
    setTimeout(() => {
      this.retired.delete(old);
      old.close();
    }, CALL_TIMEOUT_MS + 1000).unref();
    for (const w of this.watches) w.retryNow();
  }

  /** Starts a watch and keeps it registered (for retryNow) until stopped. */
  private async startWatch(what: string, watch: ResumableWatch): Promise<Stoppable> {
    this.watches.add(watch);
    try {
      await watch.start();
    } catch (err) {
      this.watches.delete(watch);
      this.reach.failed(`watch ${what}`, err);
      throw err;
    }
    this.reach.succeeded();
    return {
      stop: async () => {
        this.watches.delete(watch);
        await watch.stop();
      },
    };
  }

  private subnetKey(subnet: Ip4Net): string {
    return this.subnetsPrefix + subnet.toKey();
  }

  /** False from the first call that could not reach etcd until one that could. */
  get reachable(): boolean {
    return this.reach.reachable;
  }

  /** How many times etcd became unreachable since start. */
  get outages(): number {
    return this.reach.outages;
  }

  /** Waits `ms` before a retry, or less if etcd comes back meanwhile or interruptBackoffs() is called. */
  backoff(ms: number): Promise<void> {
    return this.reach.pause(ms);
  }

  /** Ends every backoff now and makes later ones return at once, so retry loops see a stop promptly. */
  interruptBackoffs(): void {
    this.reach.interrupt();
  }

  /** Runs one etcd operation, recording whether etcd answered. */
  private async call<T>(op: string, fn: () => Promise<T>): Promise<T> {
    try {
      const result = await fn();
      this.reach.succeeded();
      return result;
    } catch (err) {
      this.reach.failed(op, err);
      throw err;
    }
  }

  /** The raw config text, or null when the key does not exist. */
  async getConfig(): Promise<string | null> {
    return this.call('get config', () => this.client.get(this.configKey).string());
  }

  async putConfig(text: string): Promise<void> {
    await this.call('put config', () => this.client.put(this.configKey).value(text).exec());
  }

  /**
   * Calls onChange with the new text (null when deleted) each time the config key changes. If etcd
   * cancels the watch (history compacted past it), the config is read again and watched afresh.
   */
  async watchConfig(onChange: (text: string | null) => void): Promise<Stoppable> {
    let stopped = false;
    let current: Stoppable | null = null;
    const open = async (fromRevision: string | null): Promise<void> => {
      const watch = new ResumableWatch(this.options, (c) => c.watch().key(this.configKey), fromRevision, {
        onData: (res) => {
          for (const ev of res.events) onChange(ev.type === 'Delete' ? null : ev.kv.value.toString());
        },
        onCancelled: (err) => {
          this.log.warn({ err: err.message }, 'etcd cancelled the config watch; reading the config again and watching afresh');
          void current?.stop();
          void reopen();
        },
        onDisconnect: (err) => this.reach.failed('watch config', err),
        onConnect: () => this.reach.succeeded(),
      });
      current = await this.startWatch('config', watch);
      if (stopped) await current.stop();
    };
    const reopen = async (): Promise<void> => {
      for (let delay = RECONNECT_MIN_MS; !stopped; delay = Math.min(delay * 2, RECONNECT_MAX_MS)) {
        try {
          const res = await this.call('get config', () => this.client.get(this.configKey).exec());
          if (stopped) return;
          onChange(res.kvs[0] ? res.kvs[0].value.toString() : null);
          await open((BigInt(res.header.revision) + 1n).toString());
          return;
        } catch (err) {
          this.log.debug({ err: (err as Error).message, retryInMs: delay }, 'cannot re-create the config watch; retrying');
          await this.backoff(delay);
        }
      }
    };
    await open(null);
    return {
      stop: async () => {
        stopped = true;
        await current?.stop();
      },
    };
  }

  private parseKv(kv: IKeyValue): LeaseRecord | InvalidLeaseKey {
    const key = kv.key.toString();
    let subnet: Ip4Net;
    try {
      subnet = Ip4Net.fromKey(key.slice(this.subnetsPrefix.length));
    } catch (err) {
      return { key, reason: (err as Error).message, subnet: null };
    }
    try {
      const attrs = decodeLeaseAttrs(kv.value.toString());
      return { subnet, attrs, leaseId: leaseIdOf(kv), modRevision: String(kv.mod_revision) };
    } catch (err) {
      return { key, reason: (err as Error).message, subnet };
    }
  }

  /** Every lease, read at one revision, plus the keys that could not be parsed. */
  async listLeases(): Promise<{ records: LeaseRecord[]; invalid: InvalidLeaseKey[]; revision: string }> {
    const res = await this.call('list leases', () => this.client.getAll().prefix(this.subnetsPrefix).exec());
    const records: LeaseRecord[] = [];
    const invalid: InvalidLeaseKey[] = [];
    for (const kv of res.kvs) {
      const parsed = this.parseKv(kv);
      if ('reason' in parsed) invalid.push(parsed);
      else records.push(parsed);
    }
    return { records, invalid, revision: String(res.header.revision) };
  }

  private async grant(ttlSeconds: number): Promise<string> {
    const res = await this.call('grant lease', () => this.client.leaseClient.leaseGrant({ TTL: ttlSeconds, ID: 0 }));
    if (res.error) throw new Error(`etcd lease grant failed: ${res.error}`);
    return String(res.ID);
  }

  private async revokeQuietly(leaseId: string): Promise<void> {
    await this.client.leaseClient.leaseRevoke({ ID: leaseId }).catch(() => undefined);
  }

  /**
   * Claims a subnet that nobody holds: one transaction that succeeds only if the key does not
   * exist, so two nodes racing for the same subnet can never both win. Returns the etcd lease ID
   * and the revision of the write, or null when the key already existed.
   */
  async createLease(subnet: Ip4Net, attrs: LeaseAttrs, ttlSeconds: number): Promise<WrittenLease | null> {
    const leaseId = await this.grant(ttlSeconds);
    const key = this.subnetKey(subnet);
    const res = await this.call('create lease', () =>
      this.client
        .if(key, 'Create', '==', 0)
        .then(this.client.put(key).value(encodeLeaseAttrs(attrs)).lease(leaseId))
        .commit(),
    );
    if (!res.succeeded) {
      await this.revokeQuietly(leaseId);
      return null;
    }
    return { leaseId, revision: String(res.header.revision) };
  }

  /**
   * Takes over an existing key (ours from before a restart) with fresh attrs, provided nobody
   * changed it since we read it at `modRevision`. A reservation stays a reservation (no TTL).
   * Returns the new etcd lease ID ('' for a reservation) and the revision of the write, or null if
   * the key changed meanwhile.
   */
  async takeOverLease(existing: LeaseRecord, attrs: LeaseAttrs, ttlSeconds: number): Promise<WrittenLease | null> {
    const key = this.subnetKey(existing.subnet);
    const leaseId = existing.leaseId === null ? null : await this.grant(ttlSeconds);
    const put = this.client.put(key).value(encodeLeaseAttrs(attrs));
    if (leaseId) put.lease(leaseId);
    const res = await this.call('take over lease', () => this.client.if(key, 'Mod', '==', existing.modRevision).then(put).commit());
    if (!res.succeeded) {
      if (leaseId) await this.revokeQuietly(leaseId);
      return null;
    }
    // The old etcd lease would otherwise linger until it expired, keeping nothing alive.
    if (existing.leaseId && existing.leaseId !== leaseId) await this.revokeQuietly(existing.leaseId);
    return { leaseId: leaseId ?? '', revision: String(res.header.revision) };
  }

  /**
   * Writes a lease as an operator does (flannelctl lease reserve/release): bound to a fresh etcd lease
   * of `ttlSeconds`, or to none (a reservation) when null. Only if the key is unchanged since
   * `modRevision` (null: only if it does not exist), so a node's write in between is never lost.
   * Returns false when the key changed meanwhile.
   */
  async putLeaseIf(subnet: Ip4Net, attrs: LeaseAttrs, ttlSeconds: number | null, modRevision: string | null): Promise<boolean> {
    const key = this.subnetKey(subnet);
    const leaseId = ttlSeconds === null ? null : await this.grant(ttlSeconds);
    const put = this.client.put(key).value(encodeLeaseAttrs(attrs));
    if (leaseId) put.lease(leaseId);
    const cond = modRevision === null ? this.client.if(key, 'Create', '==', 0) : this.client.if(key, 'Mod', '==', modRevision);
    const res = await this.call('put lease', () => cond.then(put).commit());
    if (!res.succeeded && leaseId) await this.revokeQuietly(leaseId);
    return res.succeeded;
  }

  /** Deletes a lease key if it is unchanged since `modRevision`; false when it changed meanwhile. */
  async deleteLeaseIf(subnet: Ip4Net, modRevision: string): Promise<boolean> {
    const key = this.subnetKey(subnet);
    const res = await this.call('delete lease', () => this.client.if(key, 'Mod', '==', modRevision).then(this.client.delete().key(key)).commit());
    return res.succeeded;
  }

  /**
   * Extends an etcd lease to its full TTL again. Returns the new TTL in seconds, or 0 if it is gone.
   * The keepalive stream gets a deadline: a renewal must fail, not hang, when etcd is out of reach.
   */
  async renewLease(leaseId: string): Promise<number> {
    return this.call('renew lease', async () => {
      const stream = await this.client.leaseClient.leaseKeepAlive({ deadline: Date.now() + CALL_TIMEOUT_MS });
      try {
        const res = await new Promise<{ TTL: string }>((resolve, reject) => {
          stream.on('data', resolve);
          stream.on('error', reject);
          stream.on('end', () => reject(new EtcdTimeoutError('lease renewal', CALL_TIMEOUT_MS)));
          stream.write({ ID: leaseId });
        });
        return Number(res.TTL);
      } finally {
        stream.end();
      }
    });
  }

  /** Seconds left on an etcd lease (≤ 0 when expired or unknown). */
  async leaseTimeToLive(leaseId: string): Promise<number> {
    const res = await this.call('lease time to live', () => this.client.leaseClient.leaseTimeToLive({ ID: leaseId, keys: false }));
    return Number(res.TTL);
  }

  /**
   * Watches subnets/ from `fromRevision` (inclusive). After a dropped connection the watch resumes
   * from the revision after the last event it delivered, so events survive a reconnect; if etcd
   * can no longer serve that revision (compaction), onReset tells the caller to re-list.
   */
  async watchLeases(fromRevision: string, handlers: LeaseWatchHandlers): Promise<Stoppable> {
    const watch = new ResumableWatch(this.options, (c) => c.watch().prefix(this.subnetsPrefix), fromRevision, {
      onData: (res) => this.deliverLeaseChanges(res, handlers),
      onCancelled: (err) => handlers.onReset(err.message),
      onDisconnect: (err) => {
        this.reach.failed('watch leases', err);
        handlers.onDisconnect?.(err.message);
      },
      onConnect: () => {
        this.reach.succeeded();
        handlers.onReconnect?.();
      },
    });
    return this.startWatch('leases', watch);
  }

  private deliverLeaseChanges(res: IWatchResponse, handlers: LeaseWatchHandlers): void {
    const changes: LeaseChange[] = [];
    for (const ev of res.events) {
      const revision = String(ev.kv.mod_revision);
      if (ev.type === 'Delete') {
        const name = ev.kv.key.toString().slice(this.subnetsPrefix.length);
        try {
          changes.push({ type: 'delete', subnet: Ip4Net.fromKey(name), revision });
        } catch {
          /* a stray key we never listed: nothing to remove */
        }
      } else {
        const parsed = this.parseKv(ev.kv);
        changes.push('reason' in parsed ? { type: 'invalid', revision, ...parsed } : { type: 'put', record: parsed });
      }
    }
    if (changes.length > 0) handlers.onChanges(changes, String(res.header.revision));
  }

  close(): void {
    this.reach.close();
    for (const w of this.watches) void w.stop();
    for (const old of this.retired) old.close();
    this.client.close();
  }
}
