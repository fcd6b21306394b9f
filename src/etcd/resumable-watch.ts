// One etcd watch that survives lost connections without losing its place. etcd3 can reconnect a
// watch by itself, but not well enough here: it retries on the client's existing channel, which
// after a network black hole may sit in a TCP connect for a minute after the path is back; its
// retry timers multiply when attempts fail fast (an open circuit breaker), growing to hundreds of
// attempts a second in a long outage; and it may resume from a revision past events it never
// delivered. So each attempt here runs on a fresh client of its own, one timer drives the retries,
// and the resume point is the revision after the last event actually delivered.
import { Etcd3, type IOptions, type IWatchResponse, type WatchBuilder, type Watcher } from 'etcd3';
import { Backoff } from '../common/retry.js';
import { EtcdTimeoutError, RECONNECT_MAX_MS, RECONNECT_MIN_MS } from './connection.js';

/** start() waits at most this long for etcd to confirm the watch. */
const WATCH_START_TIMEOUT_MS = 15_000;
/** One connection attempt that etcd has not confirmed by then is abandoned for a fresh one. */
const ATTEMPT_TIMEOUT_MS = 5_000;
/** How long cancelling a watch may take before we stop waiting for etcd to confirm it. */
const CANCEL_TIMEOUT_MS = 2_000;

export interface WatchEvents {
  onData(res: IWatchResponse): void;
  /** etcd cancelled the watch (its revision was compacted): it will deliver nothing more. */
  onCancelled(err: Error): void;
  onDisconnect(err: Error): void;
  onConnect(): void;
}

type State = 'idle' | 'connecting' | 'connected' | 'waiting' | 'cancelled' | 'stopped';

export class ResumableWatch {
  private client: Etcd3 | null = null;
  private watcher: Watcher | null = null;
  /** The revision to resume from: the one after the last event (or progress notice) delivered. */
  private next: string | undefined;
  private state: State = 'idle';
  private readonly backoff = new Backoff(RECONNECT_MIN_MS, RECONNECT_MAX_MS);
  private retryTimer: NodeJS.Timeout | null = null;
  private attemptTimer: NodeJS.Timeout | null = null;

  constructor(
    private readonly options: IOptions,
    private readonly build: (client: Etcd3) => WatchBuilder,
    fromRevision: string | null,
    private readonly events: WatchEvents,
  ) {
    this.next = fromRevision ?? undefined;
  }

  /** Starts watching and waits (bounded) until etcd confirms the watch; retries meanwhile. */
  async start(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const settled = new Promise<void>((resolve, reject) => {
      timer = setTimeout(() => reject(new EtcdTimeoutError('creating a watch', WATCH_START_TIMEOUT_MS)), WATCH_START_TIMEOUT_MS);
      this.onFirstConnect = resolve;
      this.onStartFailed = reject;
    });
    this.connect();
    try {
      await settled;
    } catch (err) {
      await this.stop();
      throw err;
    } finally {
      clearTimeout(timer);
      this.onFirstConnect = this.onStartFailed = null;
    }
  }

  private onFirstConnect: (() => void) | null = null;
  private onStartFailed: ((err: Error) => void) | null = null;

  private connect(): void {
    this.state = 'connecting';
    this.client = new Etcd3(this.options);
    const builder = this.build(this.client);
    if (this.next !== undefined) builder.startRevision(this.next);
    const watcher = builder.watcher();
    this.watcher = watcher;
    // etcd3 moves its resume point to (header revision + 1) on every reply, including the
    // "created" reply (the store's current revision, not the last event delivered). Our handlers
    // run after etcd3's and put it back.
    watcher.on('data', (res: IWatchResponse) => {
      const last = res.events[res.events.length - 1];
      this.next = (BigInt(last ? last.kv.mod_revision : res.header.revision) + 1n).toString();
      watcher.request.start_revision = this.next;
      this.events.onData(res);
    });
    watcher.on('connected', (res: IWatchResponse) => {
      // A watch started at "now" resumes after the revision etcd started it at.
      this.next ??= (BigInt(res.header.revision) + 1n).toString();
      watcher.request.start_revision = this.next;
      this.clearAttemptTimer();
      this.state = 'connected';
      this.backoff.reset();
      this.events.onConnect();
      this.onFirstConnect?.();
    });
    watcher.on('disconnected', (err: Error) => this.lost(err));
    const cancelled = (err: Error) => {
      if (this.state === 'cancelled' || this.state === 'stopped') return;
      this.state = 'cancelled';
      this.clearAttemptTimer();
      // While start() waits, it reports the failure to its caller instead.
      if (this.onStartFailed) this.onStartFailed(err);
      else this.events.onCancelled(err);
    };
    watcher.on('error', cancelled);
    watcher.on('end', () => cancelled(new Error('watch ended')));
    this.attemptTimer = setTimeout(() => this.lost(new EtcdTimeoutError('connecting a watch', ATTEMPT_TIMEOUT_MS)), ATTEMPT_TIMEOUT_MS);
  }

  /** The connection broke, or an attempt got nowhere: drop this client, try a fresh one later. */
  private lost(err: Error): void {
    if (this.state !== 'connecting' && this.state !== 'connected') return;
    this.clearAttemptTimer();
    this.discardClient();
    this.state = 'waiting';
    this.events.onDisconnect(err);
    const delay = Math.round(this.backoff.next() * (0.75 + Math.random() * 0.5));
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      if (this.state === 'waiting') this.connect();
    }, delay);
  }

  /**
   * etcd answers again: a watch waiting to retry does so at once, and one whose attempt is still
   * connecting starts afresh (that attempt's TCP connect may have gone into the black hole).
   */
  retryNow(): void {
    if (this.state !== 'waiting' && this.state !== 'connecting') return;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.clearAttemptTimer();
    this.discardClient();
    this.connect();
  }

  private clearAttemptTimer(): void {
    if (this.attemptTimer) clearTimeout(this.attemptTimer);
    this.attemptTimer = null;
  }

  /** Takes the current watcher and client out of use; the watcher's late events are ignored. */
  private detach(): { watcher: Watcher | null; client: Etcd3 | null } {
    const { watcher, client } = this;
    this.watcher = null;
    this.client = null;
    watcher?.removeAllListeners();
    watcher?.on('error', () => undefined);
    return { watcher, client };
  }

  /** Forgets the current watcher and closes its client (which takes its connections along). */
  private discardClient(): void {
    const { watcher, client } = this.detach();
    // Off the client's list first, or its manager would keep re-establishing a stream for it.
    void watcher?.cancel().catch(() => undefined);
    client?.close();
  }

  /**
   * Cancels the watch. One that etcd already cancelled must not be cancelled again: etcd3 would
   * send a cancel for an ID etcd no longer knows and wait forever for the reply. The wait is
   * bounded in any case, since callers run it inside the lease manager's queue.
   */
  async stop(): Promise<void> {
    if (this.state === 'stopped') return;
    const wasConnected = this.state === 'connected';
    this.state = 'stopped';
    this.clearAttemptTimer();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const { watcher, client } = this.detach();
    if (watcher) {
      if (wasConnected) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          watcher.cancel().catch(() => undefined),
          new Promise<void>((resolve) => {
            timer = setTimeout(resolve, CANCEL_TIMEOUT_MS);
          }),
        ]);
        clearTimeout(timer);
      }
    }
    client?.close();
  }
}
