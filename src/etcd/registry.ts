// The etcd v3 registry: the only module that knows how flannel's data is laid out in etcd, and the
// etcd implementation of the lease manager's LeaseStore. <prefix>/config holds the network config;
// <prefix>/subnets/<a.b.c.d>-<len> holds one lease each, bound to an etcd lease (or to none: a
// reservation). The client's lifecycle (reconnects, reachability, backoff) is src/etcd/client.ts.
import type { Etcd3, IKeyValue, IRangeResponse, IWatchResponse } from 'etcd3';
import type { Logger } from '../common/log.js';
import { isAbort, jitteredBackoff, retry } from '../common/retry.js';
import type { Ip4Net } from '../common/ip4.js';
import type { Ip6Net } from '../common/ip6.js';
import { type LeaseAttrs, encodeLeaseAttrs } from '../subnet/lease.js';
import {
  type InvalidLeaseKey, type LeaseChange, type LeaseListing, type LeaseRecord, type LeaseStore, type LeaseWatchHandlers, type Stoppable,
  type WrittenLease, leaseKeyName, parseLeaseKey, parseStoredLease,
} from '../subnet/lease-store.js';
import { EtcdClient } from './client.js';
import { CALL_TIMEOUT_MS, type EtcdConnectionOptions, EtcdTimeoutError, RECONNECT_MAX_MS, RECONNECT_MIN_MS, isResponseTooLarge } from './connection.js';
import { ResumableWatch } from './resumable-watch.js';

export { type EtcdConnectionOptions, etcdErrorFields, isConnectivityError } from './connection.js';
export type { InvalidLeaseKey, LeaseChange, LeaseRecord, Stoppable } from '../subnet/lease-store.js';

/** etcd lease IDs are int64; a zero or absent ID means no lease. */
function leaseIdOf(kv: IKeyValue): string | null {
  return kv.lease && kv.lease !== '0' ? String(kv.lease) : null;
}

/** Keys per page when listing: bounded responses whatever the number of leases. */
const LIST_PAGE_SIZE = 1000;

/** The first key after every key that starts with `prefix` (etcd's range end for a prefix). */
function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]!++;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}

function isCompacted(err: unknown): boolean {
  return err instanceof Error && /compacted/i.test(err.message);
}

export class EtcdRegistry implements LeaseStore {
  private readonly client: EtcdClient;
  private readonly configKey: string;
  private readonly subnetsPrefix: string;
  private readonly subnetsKey: Buffer;

  constructor(opts: EtcdConnectionOptions, private readonly log: Logger) {
    const prefix = opts.prefix.replace(/\/+$/, '');
    this.configKey = `${prefix}/config`;
    this.subnetsPrefix = `${prefix}/subnets/`;
    this.subnetsKey = Buffer.from(this.subnetsPrefix);
    this.client = new EtcdClient(opts, log, this.configKey);
  }

  private get etcd(): Etcd3 {
    return this.client.etcd;
  }

  /** `<prefix>/subnets/a.b.c.d-24`, or `…-24&<ipv6>-64` in dual stack (upstream's layout). */
  private subnetKey(subnet: Ip4Net, ipv6Subnet: Ip6Net | null = null): string {
    return this.subnetsPrefix + leaseKeyName(subnet, ipv6Subnet);
  }

  /** False from the first call that could not reach etcd until one that could. */
  get reachable(): boolean {
    return this.client.reachable;
  }

  /** How many times etcd became unreachable since start. */
  get outages(): number {
    return this.client.outages;
  }

  /** Aborted when etcd answers again after a failure (then replaced): retry loops on etcd wake on it. */
  get recovered(): AbortSignal {
    return this.client.recovered;
  }

  /** The raw config text, or null when the key does not exist. */
  async getConfig(): Promise<string | null> {
    return this.client.call('get config', (etcd) => etcd.get(this.configKey).string());
  }

  async putConfig(text: string): Promise<void> {
    await this.client.call('put config', (etcd) => etcd.put(this.configKey).value(text).exec());
  }

  /**
   * Calls onChange with the new text (null when deleted) each time the config key changes. If etcd
   * cancels the watch (history compacted past it), the config is read again and watched afresh.
   */
  async watchConfig(onChange: (text: string | null) => void): Promise<Stoppable> {
    const stopper = new AbortController();
    let current: Stoppable | null = null;
    const open = async (fromRevision: string | null): Promise<void> => {
      const watch = new ResumableWatch(this.client, (c) => c.watch().key(this.configKey), fromRevision, {
        onData: (res) => {
          for (const ev of res.events) onChange(ev.type === 'Delete' ? null : ev.kv.value.toString());
        },
        onCancelled: (err) => {
          this.log.warn({ err: err.message }, 'etcd cancelled the config watch; reading the config again and watching afresh');
          void current?.stop();
          void reopen();
        },
        onDisconnect: (err) => this.client.failed('watch config', err),
        onConnect: () => this.client.succeeded(),
      });
      current = await this.client.startWatch('config', watch);
      if (stopper.signal.aborted) await current.stop();
    };
    const reopen = async (): Promise<void> => {
      try {
        await retry(async (signal) => {
          const res = await this.client.call('get config', (etcd) => etcd.get(this.configKey).exec());
          if (signal?.aborted) return;
          onChange(res.kvs[0] ? res.kvs[0].value.toString() : null);
          await open((BigInt(res.header.revision) + 1n).toString());
        }, {
          signal: stopper.signal,
          backoff: jitteredBackoff(RECONNECT_MIN_MS, RECONNECT_MAX_MS),
          wakeup: () => this.recovered,
          onError: (err, retryInMs) => this.log.debug({ err: (err as Error).message, retryInMs }, 'cannot re-create the config watch; retrying'),
        });
      } catch (err) {
        if (!isAbort(err)) throw err;
      }
    };
    await open(null);
    return {
      stop: async () => {
        stopper.abort();
        await current?.stop();
      },
    };
  }

  private parseKv(kv: IKeyValue): LeaseRecord | InvalidLeaseKey {
    const key = kv.key.toString();
    return parseStoredLease({
      key,
      name: key.slice(this.subnetsPrefix.length),
      value: kv.value.toString(),
      leaseId: leaseIdOf(kv),
      modRevision: String(kv.mod_revision),
      createRevision: String(kv.create_revision),
    });
  }

  /**
   * Every lease, read at one revision in pages of bounded size, plus the keys that cannot be used. A
   * page too big for the gRPC receive limit is read again in smaller pages; a single value that alone
   * is too big is reported as an invalid key (it cannot be a lease anyway). If the revision is
   * compacted between pages, the listing starts over.
   */
  async listLeases(): Promise<LeaseListing> {
    return this.listAll('0');
  }

  /**
   * The keys created after `revision`, read like listLeases but filtered by etcd (min_create_revision):
   * the response holds only them, so the read stays small whatever the number of leases (etcd still
   * reads the whole range to filter it, on its side).
   */
  async listLeasesCreatedAfter(revision: string): Promise<LeaseListing> {
    return this.listAll((BigInt(revision) + 1n).toString());
  }

  private async listAll(minCreateRevision: string): Promise<LeaseListing> {
    for (;;) {
      try {
        return await this.listPages(minCreateRevision);
      } catch (err) {
        if (!isCompacted(err)) throw err;
        this.log.debug({ err: (err as Error).message }, 'listing revision compacted between pages; listing again');
      }
    }
  }

  /** `minCreateRevision`: only keys created at or after it ('0': every key). */
  private async listPages(minCreateRevision: string): Promise<LeaseListing> {
    const records: LeaseRecord[] = [];
    const invalid: InvalidLeaseKey[] = [];
    const end = prefixEnd(this.subnetsKey);
    let from = this.subnetsKey;
    let revision = '0';
    let limit = LIST_PAGE_SIZE;
    for (;;) {
      let res: IRangeResponse;
      try {
        res = await this.range(from, end, limit, revision, false, minCreateRevision);
      } catch (err) {
        if (!isResponseTooLarge(err)) throw err;
        if (limit > 1) {
          limit = Math.max(1, Math.floor(limit / 8));
          continue;
        }
        const [kv] = (await this.range(from, end, 1, revision, true, minCreateRevision)).kvs;
        if (!kv) throw err;
        const key = kv.key.toString();
        const modRevision = String(kv.mod_revision);
        const named = parseLeaseKey(key, key.slice(this.subnetsPrefix.length), modRevision);
        const subnets = 'code' in named ? { subnet: null, ipv6Subnet: null } : named;
        invalid.push({ key, code: 'too_large', reason: 'the value is larger than an etcd response may be', ...subnets, modRevision });
        from = Buffer.concat([kv.key, Buffer.from([0])]);
        continue;
      }
      if (revision === '0') revision = String(res.header.revision);
      for (const kv of res.kvs) {
        const parsed = this.parseKv(kv);
        if ('code' in parsed) invalid.push(parsed);
        else records.push(parsed);
      }
      const last = res.kvs[res.kvs.length - 1];
      if (!res.more || !last) break;
      from = Buffer.concat([last.key, Buffer.from([0])]);
      limit = LIST_PAGE_SIZE;
    }
    return { records, invalid, revision };
  }

  private range(from: Buffer, end: Buffer, limit: number, revision: string, keysOnly: boolean, minCreateRevision: string): Promise<IRangeResponse> {
    return this.client.call('list leases', (etcd) =>
      etcd.kv.range({ key: from, range_end: end, limit, revision, keys_only: keysOnly, min_create_revision: minCreateRevision }),
    );
  }

  private async grant(ttlSeconds: number): Promise<string> {
    const res = await this.client.call('grant lease', (etcd) => etcd.leaseClient.leaseGrant({ TTL: ttlSeconds, ID: 0 }));
    if (res.error) throw new Error(`etcd lease grant failed: ${res.error}`);
    return String(res.ID);
  }

  private async revokeQuietly(leaseId: string): Promise<void> {
    await this.etcd.leaseClient.leaseRevoke({ ID: leaseId }).catch(() => undefined);
  }

  /**
   * Claims a subnet that nobody holds: one transaction that succeeds only if the key does not
   * exist, so two nodes racing for the same subnet can never both win. Returns the etcd lease ID
   * and the revision of the write, or null when the key already existed.
   */
  async createLease(subnet: Ip4Net, attrs: LeaseAttrs, ttlSeconds: number, ipv6Subnet: Ip6Net | null = null): Promise<WrittenLease | null> {
    const leaseId = await this.grant(ttlSeconds);
    const key = this.subnetKey(subnet, ipv6Subnet);
    const res = await this.client.call('create lease', (etcd) =>
      etcd.if(key, 'Create', '==', 0).then(etcd.put(key).value(encodeLeaseAttrs(attrs)).lease(leaseId)).commit(),
    );
    if (!res.succeeded) {
      await this.revokeQuietly(leaseId);
      return null;
    }
    return { key, leaseId, revision: String(res.header.revision) };
  }

  /**
   * Takes over an existing key (ours from before a restart) with fresh attrs, provided nobody
   * changed it since we read it at `modRevision`. A reservation stays a reservation (no TTL).
   * Returns the new etcd lease ID ('' for a reservation) and the revision of the write, or null if
   * the key changed meanwhile.
   */
  async takeOverLease(existing: LeaseRecord, attrs: LeaseAttrs, ttlSeconds: number): Promise<WrittenLease | null> {
    const key = this.subnetKey(existing.subnet, existing.ipv6Subnet ?? null);
    const leaseId = existing.leaseId === null ? null : await this.grant(ttlSeconds);
    const res = await this.client.call('take over lease', (etcd) => {
      const put = etcd.put(key).value(encodeLeaseAttrs(attrs));
      if (leaseId) put.lease(leaseId);
      return etcd.if(key, 'Mod', '==', existing.modRevision).then(put).commit();
    });
    if (!res.succeeded) {
      if (leaseId) await this.revokeQuietly(leaseId);
      return null;
    }
    // The old etcd lease would otherwise linger until it expired, keeping nothing alive.
    if (existing.leaseId && existing.leaseId !== leaseId) await this.revokeQuietly(existing.leaseId);
    return { key, leaseId: leaseId ?? '', revision: String(res.header.revision) };
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
    const res = await this.client.call('put lease', (etcd) => {
      const put = etcd.put(key).value(encodeLeaseAttrs(attrs));
      if (leaseId) put.lease(leaseId);
      const cond = modRevision === null ? etcd.if(key, 'Create', '==', 0) : etcd.if(key, 'Mod', '==', modRevision);
      return cond.then(put).commit();
    });
    if (!res.succeeded && leaseId) await this.revokeQuietly(leaseId);
    return res.succeeded;
  }

  /**
   * Deletes a key under subnets/ (`key` is the whole key, as listed: valid or not) if it is unchanged
   * since `modRevision`; false when it changed meanwhile.
   */
  async deleteLeaseIf(key: string, modRevision: string): Promise<boolean> {
    if (!key.startsWith(this.subnetsPrefix)) throw new Error(`${key} is not under ${this.subnetsPrefix}`);
    const res = await this.client.call('delete lease', (etcd) => etcd.if(key, 'Mod', '==', modRevision).then(etcd.delete().key(key)).commit());
    return res.succeeded;
  }

  /**
   * Extends an etcd lease to its full TTL again. Returns the new TTL in seconds, or 0 if it is gone.
   * The keepalive stream gets a deadline: a renewal must fail, not hang, when etcd is out of reach.
   */
  async renewLease(leaseId: string): Promise<number> {
    return this.client.call('renew lease', async (etcd) => {
      const stream = await etcd.leaseClient.leaseKeepAlive({ deadline: Date.now() + CALL_TIMEOUT_MS });
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

  async deleteLease(subnet: Ip4Net, ipv6Subnet: Ip6Net | null = null): Promise<boolean> {
    const res = await this.client.call('delete lease', (etcd) => etcd.delete().key(this.subnetKey(subnet, ipv6Subnet)).exec());
    return Number(res.deleted) > 0;
  }

  /** Seconds left on an etcd lease (≤ 0 when expired or unknown). */
  async leaseTimeToLive(leaseId: string): Promise<number> {
    const res = await this.client.call('lease time to live', (etcd) => etcd.leaseClient.leaseTimeToLive({ ID: leaseId, keys: false }));
    return Number(res.TTL);
  }

  /**
   * Watches subnets/ from `fromRevision` (inclusive). After a dropped connection the watch resumes
   * from the revision after the last event it delivered, so events survive a reconnect; if etcd
   * can no longer serve that revision (compaction), onReset tells the caller to re-list.
   */
  async watchLeases(fromRevision: string, handlers: LeaseWatchHandlers): Promise<Stoppable> {
    const watch = new ResumableWatch(this.client, (c) => c.watch().prefix(this.subnetsPrefix), fromRevision, {
      onData: (res) => this.deliverLeaseChanges(res, handlers),
      onCancelled: (err) => handlers.onReset(err.message),
      onDisconnect: (err) => {
        this.client.failed('watch leases', err);
        handlers.onDisconnect?.(err.message);
      },
      onConnect: () => {
        this.client.succeeded();
        handlers.onReconnect?.();
      },
    });
    return this.client.startWatch('leases', watch);
  }

  private deliverLeaseChanges(res: IWatchResponse, handlers: LeaseWatchHandlers): void {
    const changes: LeaseChange[] = [];
    for (const ev of res.events) {
      const revision = String(ev.kv.mod_revision);
      if (ev.type === 'Delete') {
        const key = ev.kv.key.toString();
        const named = parseLeaseKey(key, key.slice(this.subnetsPrefix.length), revision);
        const subnets = 'code' in named ? { subnet: null, ipv6Subnet: null } : named;
        changes.push({ type: 'delete', key, ...subnets, revision });
      } else {
        const parsed = this.parseKv(ev.kv);
        changes.push('code' in parsed ? { type: 'invalid', revision, ...parsed } : { type: 'put', record: parsed });
      }
    }
    if (changes.length > 0) handlers.onChanges(changes, String(res.header.revision));
  }

  close(): void {
    this.client.close();
  }
}
