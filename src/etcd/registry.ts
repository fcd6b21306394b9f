// The etcd v3 registry: the only module that knows how flannel's data is laid out in etcd.
// <prefix>/config holds the network config; <prefix>/subnets/<a.b.c.d>-<len> holds one lease each,
// bound to an etcd lease (or to none: a reservation).
import { readFileSync } from 'node:fs';
import { Etcd3, type IKeyValue, type IOptions, type Watcher } from 'etcd3';
import type { Logger } from '../daemon/log.js';
import { Ip4Net } from '../subnet/ip4.js';
import { type LeaseAttrs, decodeLeaseAttrs, encodeLeaseAttrs } from '../subnet/lease.js';

export interface EtcdConnectionOptions {
  endpoints: string[];
  prefix: string;
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  username?: string;
  password?: string;
}

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
  | { type: 'delete'; subnet: Ip4Net }
  | ({ type: 'invalid' } & InvalidLeaseKey);

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

/** etcd lease IDs are int64; a zero or absent ID means no lease. */
function leaseIdOf(kv: IKeyValue): string | null {
  return kv.lease && kv.lease !== '0' ? String(kv.lease) : null;
}

export function buildClientOptions(opts: EtcdConnectionOptions): IOptions {
  const hosts = opts.endpoints.map((e) => e.trim()).filter((e) => e !== '');
  if (hosts.length === 0) throw new Error('--etcd-endpoints: at least one endpoint is required');
  const options: IOptions = { hosts, dialTimeout: 5000 };
  const secure = hosts.some((h) => h.startsWith('https://'));
  if (secure || opts.caFile) {
    if (!opts.caFile) throw new Error('--etcd-cafile is required for https endpoints');
    const read = (flag: string, path: string) => {
      try {
        return readFileSync(path);
      } catch (err) {
        throw new Error(`${flag}: cannot read ${path}: ${(err as Error).message}`);
      }
    };
    options.credentials = {
      rootCertificate: read('--etcd-cafile', opts.caFile),
      ...(opts.keyFile ? { privateKey: read('--etcd-keyfile', opts.keyFile) } : {}),
      ...(opts.certFile ? { certChain: read('--etcd-certfile', opts.certFile) } : {}),
    };
  }
  if (opts.username) options.auth = { username: opts.username, password: opts.password ?? '' };
  return options;
}

export class EtcdRegistry {
  private readonly client: Etcd3;
  private readonly configKey: string;
  private readonly subnetsPrefix: string;

  constructor(
    opts: EtcdConnectionOptions,
    private readonly log: Logger,
  ) {
    this.client = new Etcd3(buildClientOptions(opts));
    const prefix = opts.prefix.replace(/\/+$/, '');
    this.configKey = `${prefix}/config`;
    this.subnetsPrefix = `${prefix}/subnets/`;
  }

  subnetKey(subnet: Ip4Net): string {
    return this.subnetsPrefix + subnet.toKey();
  }

  /** The raw config text, or null when the key does not exist. */
  async getConfig(): Promise<string | null> {
    return this.client.get(this.configKey).string();
  }

  async putConfig(text: string): Promise<void> {
    await this.client.put(this.configKey).value(text);
  }

  /** Calls onChange with the new text (null when deleted) each time the config key changes. */
  async watchConfig(onChange: (text: string | null) => void): Promise<Stoppable> {
    const watcher = await this.client.watch().key(this.configKey).create();
    watcher.on('put', (kv) => onChange(kv.value.toString()));
    watcher.on('delete', () => onChange(null));
    watcher.on('error', (err: Error) => this.log.warn({ err: err.message }, 'config watch error'));
    return { stop: () => watcher.cancel() };
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
    const res = await this.client.getAll().prefix(this.subnetsPrefix).exec();
    const records: LeaseRecord[] = [];
    const invalid: InvalidLeaseKey[] = [];
    for (const kv of res.kvs) {
      const parsed = this.parseKv(kv);
      if ('reason' in parsed) invalid.push(parsed);
      else records.push(parsed);
    }
    return { records, invalid, revision: String(res.header.revision) };
  }

  async getLease(subnet: Ip4Net): Promise<LeaseRecord | null> {
    const res = await this.client.get(this.subnetKey(subnet)).exec();
    const kv = res.kvs[0];
    if (!kv) return null;
    const parsed = this.parseKv(kv);
    return 'reason' in parsed ? null : parsed;
  }

  private async grant(ttlSeconds: number): Promise<string> {
    const res = await this.client.leaseClient.leaseGrant({ TTL: ttlSeconds, ID: 0 });
    if (res.error) throw new Error(`etcd lease grant failed: ${res.error}`);
    return String(res.ID);
  }

  private async revokeQuietly(leaseId: string): Promise<void> {
    await this.client.leaseClient.leaseRevoke({ ID: leaseId }).catch(() => undefined);
  }

  /**
   * Claims a subnet that nobody holds: one transaction that succeeds only if the key does not
   * exist, so two nodes racing for the same subnet can never both win. Returns the etcd lease ID,
   * or null when the key already existed.
   */
  async createLease(subnet: Ip4Net, attrs: LeaseAttrs, ttlSeconds: number): Promise<string | null> {
    const leaseId = await this.grant(ttlSeconds);
    const key = this.subnetKey(subnet);
    const res = await this.client
      .if(key, 'Create', '==', 0)
      .then(this.client.put(key).value(encodeLeaseAttrs(attrs)).lease(leaseId))
      .commit();
    if (!res.succeeded) {
      await this.revokeQuietly(leaseId);
      return null;
    }
    return leaseId;
  }

  /**
   * Takes over an existing key (ours from before a restart) with fresh attrs, provided nobody
   * changed it since we read it at `modRevision`. A reservation stays a reservation (no TTL).
   * Returns the new etcd lease ID ('' for a reservation), or null if the key changed meanwhile.
   */
  async takeOverLease(existing: LeaseRecord, attrs: LeaseAttrs, ttlSeconds: number): Promise<string | null> {
    const key = this.subnetKey(existing.subnet);
    const leaseId = existing.leaseId === null ? null : await this.grant(ttlSeconds);
    const put = this.client.put(key).value(encodeLeaseAttrs(attrs));
    if (leaseId) put.lease(leaseId);
    const res = await this.client.if(key, 'Mod', '==', existing.modRevision).then(put).commit();
    if (!res.succeeded) {
      if (leaseId) await this.revokeQuietly(leaseId);
      return null;
    }
    // The old etcd lease would otherwise linger until it expired, keeping nothing alive.
    if (existing.leaseId && existing.leaseId !== leaseId) await this.revokeQuietly(existing.leaseId);
    return leaseId ?? '';
  }

  /** Extends an etcd lease to its full TTL again. Returns the new TTL in seconds, or 0 if it is gone. */
  async renewLease(leaseId: string): Promise<number> {
    const stream = await this.client.leaseClient.leaseKeepAlive();
    try {
      const res = await new Promise<{ TTL: string }>((resolve, reject) => {
        stream.on('data', resolve);
        stream.on('error', reject);
        stream.write({ ID: leaseId });
      });
      return Number(res.TTL);
    } finally {
      stream.end();
    }
  }

  /** Seconds left on an etcd lease (≤ 0 when expired or unknown). */
  async leaseTimeToLive(leaseId: string): Promise<number> {
    const res = await this.client.leaseClient.leaseTimeToLive({ ID: leaseId, keys: false });
    return Number(res.TTL);
  }

  async deleteLease(subnet: Ip4Net): Promise<void> {
    await this.client.delete().key(this.subnetKey(subnet));
  }

  /**
   * Watches subnets/ from `fromRevision` (inclusive). The client resumes from the last revision it
   * delivered after a dropped connection, so events survive a reconnect; if etcd can no longer serve
   * that revision (compaction), onReset tells the caller to re-list.
   */
  async watchLeases(fromRevision: string, handlers: LeaseWatchHandlers): Promise<Stoppable> {
    const watcher: Watcher = await this.client.watch().prefix(this.subnetsPrefix).startRevision(fromRevision).create();
    watcher.on('data', (res) => {
      const changes: LeaseChange[] = [];
      for (const ev of res.events) {
        if (ev.type === 'Delete') {
          const name = ev.kv.key.toString().slice(this.subnetsPrefix.length);
          try {
            changes.push({ type: 'delete', subnet: Ip4Net.fromKey(name) });
          } catch {
            /* a stray key we never listed: nothing to remove */
          }
        } else {
          const parsed = this.parseKv(ev.kv);
          changes.push('reason' in parsed ? { type: 'invalid', ...parsed } : { type: 'put', record: parsed });
        }
      }
      if (changes.length > 0) handlers.onChanges(changes, String(res.header.revision));
    });
    watcher.on('disconnected', (err: Error) => handlers.onDisconnect?.(err.message));
    watcher.on('connected', () => handlers.onReconnect?.());
    watcher.on('error', (err: Error) => handlers.onReset(err.message));
    watcher.on('end', () => handlers.onReset('watch ended'));
    return {
      stop: async () => {
        watcher.removeAllListeners('end');
        watcher.removeAllListeners('error');
        watcher.on('error', () => undefined);
        await watcher.cancel().catch(() => undefined);
      },
    };
  }

  close(): void {
    this.client.close();
  }
}
