// The etcd client's lifecycle, apart from what we store in etcd: one current client for calls,
// replaced by a fresh one when etcd comes back after a failure; watches on clients of their own;
// reachability tracked from every call and watch (an outage is logged once), and the wake-up signal
// that ends retry waits when etcd is back. src/etcd/registry.ts builds flannel's keys on top.
import { Etcd3, type IOptions } from 'etcd3';
import type { Logger } from '../common/log.js';
import { etcdMetrics } from '../common/metrics.js';
import { LeaseStoreUnavailableError, type Stoppable } from '../subnet/lease-store.js';
import { speedUpInt64Strings } from './int64-strings.js';
import { CALL_TIMEOUT_MS, ClientOptionsSource, type EtcdConnectionOptions, Reachability, etcdConnectionWarnings, isConnectivityError } from './connection.js';
import type { ResumableWatch } from './resumable-watch.js';

/** A probe needs no long deadline: a healthy etcd answers a read in milliseconds. */
const PROBE_TIMEOUT_MS = 2_000;

export class EtcdClient {
  /** Client options, TLS files read again when they change (see clientOptions()). */
  private readonly optionsSource: ClientOptionsSource;
  /** Replaced when etcd comes back after a failure (see reconnected()). */
  private current: Etcd3;
  /** Replaced clients, closed once the calls still running on them are over. */
  private readonly retired = new Set<Etcd3>();
  /** Each watch runs on clients of its own (see ResumableWatch). */
  private readonly watches = new Set<ResumableWatch>();
  private readonly reach: Reachability;

  constructor(
    opts: EtcdConnectionOptions,
    log: Logger,
    /** A key read by the reachability probe. */
    private readonly probeKey: string,
  ) {
    this.optionsSource = new ClientOptionsSource(opts, log);
    for (const warning of etcdConnectionWarnings(opts)) log.warn(warning);
    speedUpInt64Strings();
    this.current = new Etcd3(this.optionsSource.current());
    this.reach = new Reachability(log, opts.endpoints, () => this.probe(), () => this.reconnected());
    etcdMetrics.up.set(1);
  }

  /** Options for a fresh client: TLS files as they are on disk now (rotated certificates are used on reconnect). */
  clientOptions(): IOptions {
    return this.optionsSource.current();
  }

  /** The client for the next call. */
  get etcd(): Etcd3 {
    return this.current;
  }

  /**
   * Can etcd serve us again? A linearizable read, so that a cluster without quorum (which can renew
   * no lease) counts as unreachable, on a client of its own: a fresh connection, and no circuit
   * breaker left open by earlier failures.
   */
  private async probe(): Promise<void> {
    const client = new Etcd3(this.clientOptions());
    try {
      await client.get(this.probeKey).options({ deadline: Date.now() + PROBE_TIMEOUT_MS }).exec();
    } finally {
      client.close();
    }
  }

  /**
   * etcd answers again after a failure. Connections made while it did not may still sit in a TCP
   * connect into the black hole, and the client's circuit breaker may stay open for seconds: new
   * calls go to a fresh client (calls in flight on the old one finish or time out first). Watches
   * reconnect at once through `recovered`.
   */
  private reconnected(): void {
    const old = this.current;
    this.current = new Etcd3(this.clientOptions());
    this.retired.add(old);
    setTimeout(() => {
      this.retired.delete(old);
      old.close();
    }, CALL_TIMEOUT_MS + 1000).unref();
  }

  /** Runs one etcd operation, recording whether etcd answered; connectivity failures become LeaseStoreUnavailableError. */
  async call<T>(op: string, fn: (etcd: Etcd3) => Promise<T>): Promise<T> {
    try {
      const result = await fn(this.current);
      this.succeeded();
      return result;
    } catch (err) {
      this.failed(op, err);
      throw isConnectivityError(err) ? new LeaseStoreUnavailableError(op, err) : err;
    }
  }

  succeeded(): void {
    this.reach.succeeded();
  }

  failed(op: string, err: unknown): void {
    this.reach.failed(op, err);
  }

  /** Starts a watch and keeps it registered (closed with the client) until stopped. */
  async startWatch(what: string, watch: ResumableWatch): Promise<Stoppable> {
    this.watches.add(watch);
    try {
      await watch.start();
    } catch (err) {
      this.watches.delete(watch);
      this.failed(`watch ${what}`, err);
      throw err;
    }
    this.succeeded();
    return {
      stop: async () => {
        this.watches.delete(watch);
        await watch.stop();
      },
    };
  }

  /** False from the first call that could not reach etcd until one that could. */
  get reachable(): boolean {
    return this.reach.reachable;
  }

  /** How many times etcd became unreachable since start. */
  get outages(): number {
    return this.reach.outages;
  }

  /** Aborted when etcd answers again after a failure (then replaced): the wake-up of retry loops on etcd. */
  get recovered(): AbortSignal {
    return this.reach.recovered;
  }

  close(): void {
    this.reach.close();
    for (const w of this.watches) void w.stop();
    for (const old of this.retired) old.close();
    this.current.close();
  }
}
