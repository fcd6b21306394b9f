// How we talk to etcd when the network misbehaves: client options with deadlines and keepalives,
// which failures mean "etcd is out of reach", and the reachability tracker that logs an outage
// once when it starts and once when it ends, however many retries happen in between.
import { readFileSync, statSync } from 'node:fs';
import { ConsecutiveBreaker, circuitBreaker, handleWhen, retry as retryPolicy } from 'cockatiel';
import { EtcdWatchStreamEnded, GRPCResourceExhastedError, type IOptions, castGrpcError, isRecoverableError } from 'etcd3';
import type { Logger } from '../common/log.js';
import { LeaseStoreUnavailableError } from '../subnet/lease-store.js';
import { etcdMetrics } from '../common/metrics.js';
import { Wakeup, jitteredBackoff, retry } from '../common/retry.js';

export interface EtcdConnectionOptions {
  endpoints: string[];
  prefix: string;
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  username?: string;
  password?: string;
  /** The largest gRPC response accepted (default 64 MiB); lower only in tests of the paging. */
  maxReceiveBytes?: number;
}

/** Every unary call gets this deadline: without one a call to an etcd behind a black hole never returns. */
export const CALL_TIMEOUT_MS = 5_000;
/** Reconnection attempts (watch streams, probes, TCP connects) back off up to this much, so a
 *  returning etcd is noticed within seconds rather than after a long exponential wait. */
export const RECONNECT_MIN_MS = 250;
export const RECONNECT_MAX_MS = 2_000;
/** A connection that comes back within this long (a member failover, a reset stream) is no outage. */
const OUTAGE_GRACE_MS = 3_000;

export class EtcdTimeoutError extends Error {
  constructor(what: string, ms: number) {
    super(`${what}: no answer from etcd within ${ms} ms`);
    this.name = 'EtcdTimeoutError';
  }
}

/**
 * A response larger than the gRPC receive limit. etcd3 counts it as recoverable (retrying it, and
 * opening its circuit breaker), but it is a data problem: retrying the same request cannot help.
 */
export function isResponseTooLarge(err: unknown): boolean {
  return err instanceof GRPCResourceExhastedError || (err instanceof Error && /RESOURCE_EXHAUSTED|larger than max/i.test(err.message));
}

/** What etcd3's retry and circuit breaker should act on: transport failures, not oversized responses. */
const isTransportFailure = (err: Error): boolean => isRecoverableError(err) && !isResponseTooLarge(err);

/** A failure that means "etcd cannot be reached right now" (as opposed to a refusal or bad data). */
export function isConnectivityError(err: unknown): boolean {
  if (err instanceof LeaseStoreUnavailableError) return true;
  if (!(err instanceof Error) || isResponseTooLarge(err)) return false;
  if (isRecoverableError(err) || 'isBrokenCircuitError' in err || err instanceof EtcdTimeoutError || err instanceof EtcdWatchStreamEnded) return true;
  // Streams (watch, keepalive) report raw gRPC errors, which etcd3 does not classify.
  return 'code' in err && typeof err.code === 'number' && isRecoverableError(castGrpcError(err));
}

/** TLS handshake failures surface as "unavailable"; say which flags to check. */
function tlsHint(message: string): string | undefined {
  return /certificate|ssl|tls|handshake|alert|self.signed|verify/i.test(message)
    ? 'TLS handshake with etcd failed: check --etcd-cafile, --etcd-certfile and --etcd-keyfile, and that etcd trusts the CA that signed our client certificate'
    : undefined;
}

/** Log fields for an etcd failure: the error, and what to check when it is a TLS problem. */
export function etcdErrorFields(err: unknown): { err: string; hint?: string } {
  const message = err instanceof Error ? err.message : String(err);
  const hint = tlsHint(message);
  return hint ? { err: message, hint } : { err: message };
}

export function buildClientOptions(opts: EtcdConnectionOptions): IOptions {
  const hosts = opts.endpoints.map((e) => e.trim()).filter((e) => e !== '');
  if (hosts.length === 0) throw new Error('--etcd-endpoints: at least one endpoint is required');
  const options: IOptions = {
    hosts,
    // Streams (watch, keepalive) have no deadline; keepalive pings find a dead connection instead.
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + CALL_TIMEOUT_MS }),
    grpcOptions: {
      // etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time).
      'grpc.keepalive_time_ms': 10_000,
      'grpc.keepalive_timeout_ms': 5_000,
      'grpc.initial_reconnect_backoff_ms': RECONNECT_MIN_MS * 2,
      'grpc.max_reconnect_backoff_ms': RECONNECT_MAX_MS,
      // A channel closed after a failure takes its half-open TCP connect with it, so the next
      // attempt dials afresh instead of waiting out SYN retransmissions to a black hole.
      'grpc.use_local_subchannel_pool': 1,
      // gRPC's default 4 MiB would let a few huge values under subnets/ make every listing fail;
      // listings are paged, and a page too big for this is read again in smaller pages.
      'grpc.max_receive_message_length': opts.maxReceiveBytes ?? 64 * 1024 * 1024,
    },
    // etcd3's own defaults, minus oversized responses (see isResponseTooLarge). These are etcd3's
    // fail-over between endpoints within one call (its API takes cockatiel policies); our own retry
    // loops (src/common/retry.ts) sit above them. Watches reconnect through ResumableWatch, each
    // attempt on a client of its own, so etcd3's watch backoff never drives a reconnect.
    faultHandling: {
      host: () => circuitBreaker(handleWhen(isTransportFailure), { halfOpenAfter: 5000, breaker: new ConsecutiveBreaker(3) }),
      global: retryPolicy(handleWhen(isTransportFailure), { maxAttempts: 3 }),
    },
  };
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
    if (Boolean(opts.certFile) !== Boolean(opts.keyFile)) throw new Error('--etcd-certfile and --etcd-keyfile must be given together');
    options.credentials = {
      rootCertificate: read('--etcd-cafile', opts.caFile),
      ...(opts.keyFile ? { privateKey: read('--etcd-keyfile', opts.keyFile) } : {}),
      ...(opts.certFile ? { certChain: read('--etcd-certfile', opts.certFile) } : {}),
    };
  }
  if (opts.username) options.auth = { username: opts.username, password: opts.password ?? '' };
  return options;
}

/**
 * What is wrong but not fatal in the connection flags, one line each: TLS client files that cannot be
 * used (no https:// endpoint and no --etcd-cafile: the connection is plaintext) and a password that
 * would cross the network in plaintext.
 */
export function etcdConnectionWarnings(opts: EtcdConnectionOptions): string[] {
  const tls = Boolean(opts.caFile) || opts.endpoints.some((h) => h.trim().startsWith('https://'));
  const out: string[] = [];
  if (!tls && (opts.certFile || opts.keyFile)) {
    out.push('--etcd-certfile and --etcd-keyfile are not used: no --etcd-endpoints is https:// and no --etcd-cafile is given, so the connection to etcd is plaintext');
  }
  if (!tls && opts.username && opts.password) {
    out.push('--etcd-password is sent to etcd in plaintext: the endpoints are http://; use https:// endpoints (with --etcd-cafile) to protect it');
  }
  return out;
}

/**
 * The client options for each new client, with the TLS files read again when one changed on disk
 * (certificates rotated in place), so that a reconnect — a fresh client — presents the new ones. A file
 * that cannot be read at that moment (a rotation half done) keeps the last good options, warned once.
 */
export class ClientOptionsSource {
  private options: IOptions;
  private stamp: string;
  private failedStamp = '';

  constructor(
    private readonly opts: EtcdConnectionOptions,
    private readonly log: Logger,
  ) {
    this.options = buildClientOptions(opts);
    this.stamp = this.filesStamp();
  }

  /** Size, change time and inode of each TLS file: what a rotation changes. */
  private filesStamp(): string {
    return [this.opts.caFile, this.opts.certFile, this.opts.keyFile]
      .map((f) => {
        if (!f) return '-';
        try {
          const st = statSync(f);
          return `${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
        } catch {
          return 'missing';
        }
      })
      .join('|');
  }

  current(): IOptions {
    const stamp = this.filesStamp();
    if (stamp === this.stamp || stamp === this.failedStamp) return this.options;
    try {
      this.options = buildClientOptions(this.opts);
      this.stamp = stamp;
      this.log.info('etcd TLS files changed on disk; new connections use them');
    } catch (err) {
      this.failedStamp = stamp;
      this.log.warn({ err: (err as Error).message }, 'etcd TLS files changed on disk but cannot be read; keeping the previous ones');
    }
    return this.options;
  }
}

/**
 * Whether etcd answers, as seen from every call and watch of one registry. A dropped connection
 * that comes back within OUTAGE_GRACE_MS (a member failover) is logged at info; a longer one is
 * an outage, logged once as a warning when it starts and once when it ends. While it lasts a probe
 * keeps trying (retry(), with backoff), so that the end is noticed promptly even when nothing else
 * calls; the end wakes every retry loop waiting on `recovered`.
 */
export class Reachability {
  private down: { since: number; op: string; err: string; warned: boolean } | null = null;
  /** Aborted when the outage ends (or on close): stops its probe loop. */
  private outage: AbortController | null = null;
  private graceTimer: NodeJS.Timeout | null = null;
  private readonly back = new Wakeup();
  private closed = false;
  outages = 0;

  constructor(
    private readonly log: Logger,
    private readonly endpoints: string[],
    private readonly probe: () => Promise<unknown>,
    /** Called when etcd answers again after a failure. */
    private readonly onBack: () => void = () => undefined,
  ) {}

  get reachable(): boolean {
    return this.down === null;
  }

  /** Aborted when etcd answers again after a failure (then replaced): the wake-up of every retry loop on etcd. */
  get recovered(): AbortSignal {
    return this.back.signal;
  }

  failed(op: string, err: unknown): void {
    if (!isConnectivityError(err) || this.closed) return;
    const message = (err as Error).message;
    if (this.down) {
      this.down.err = message;
      this.log.debug({ op, err: message }, 'etcd still unreachable');
      return;
    }
    this.down = { since: Date.now(), op, err: message, warned: false };
    etcdMetrics.up.set(0);
    this.log.debug({ op, err: message }, 'lost the connection to etcd; reconnecting');
    this.graceTimer = setTimeout(() => this.warn(), OUTAGE_GRACE_MS);
    this.graceTimer.unref();
    this.outage = new AbortController();
    void this.probeUntilBack(this.outage.signal);
  }

  /** Probes with backoff until etcd answers (then ends the outage) or `signal` is aborted. */
  private async probeUntilBack(signal: AbortSignal): Promise<void> {
    try {
      await retry(() => this.probe(), {
        signal,
        backoff: jitteredBackoff(RECONNECT_MIN_MS, RECONNECT_MAX_MS),
        onError: (err, retryInMs) => this.log.debug({ err: (err as Error).message, retryInMs }, 'etcd still unreachable; retrying'),
      });
    } catch {
      return; // stopped: the outage ended through another call, or the registry closed
    }
    this.succeeded();
  }

  private warn(): void {
    this.graceTimer = null;
    if (!this.down || this.closed) return;
    this.down.warned = true;
    this.outages++;
    etcdMetrics.outages.inc();
    this.log.warn(
      { endpoints: this.endpoints, op: this.down.op, ...etcdErrorFields(new Error(this.down.err)), since: new Date(this.down.since).toISOString() },
      'etcd is unreachable; the data plane keeps forwarding with the leases it has, retrying with backoff',
    );
  }

  succeeded(): void {
    if (!this.down || this.closed) return;
    const { since, warned, op } = this.down;
    this.down = null;
    etcdMetrics.up.set(1);
    this.endOutage();
    if (warned) this.log.info({ outageMs: Date.now() - since }, 'etcd is reachable again');
    else this.log.info({ op, downMs: Date.now() - since }, 'etcd connection dropped and re-established');
    this.onBack();
    this.back.wake();
  }

  private endOutage(): void {
    this.outage?.abort();
    this.outage = null;
    if (this.graceTimer) clearTimeout(this.graceTimer);
    this.graceTimer = null;
  }

  close(): void {
    this.closed = true;
    this.endOutage();
  }
}
