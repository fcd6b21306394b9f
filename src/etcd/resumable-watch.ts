// One etcd watch that survives lost connections without losing its place. etcd3 can reconnect a
// watch by itself, but not well enough here: it retries on the client's existing channel, which
// after a network black hole may sit in a TCP connect for a minute after the path is back; its
// retry timers multiply when attempts fail fast (an open circuit breaker), growing to hundreds of
// attempts a second in a long outage; and it may resume from a revision past events it never
// delivered. So each attempt here runs on a fresh client of its own, retry() drives the attempts
// (jittered backoff, and at once when etcd answers again), and the resume point is the revision
// after the last event actually delivered.
import { Etcd3, type IOptions, type IWatchResponse, type WatchBuilder, type Watcher } from 'etcd3';
import { abortReason, isAbort, jitteredBackoff, retry } from '../common/retry.js';
import { EtcdTimeoutError, RECONNECT_MAX_MS, RECONNECT_MIN_MS, isResponseTooLarge } from './connection.js';

/** start() waits at most this long for etcd to confirm the watch. */
const WATCH_START_TIMEOUT_MS = 15_000;
/** One connection attempt that etcd has not confirmed by then is abandoned for a fresh one. */
const ATTEMPT_TIMEOUT_MS = 5_000;
/** How long cancelling a watch may take before we stop waiting for etcd to confirm it. */
const CANCEL_TIMEOUT_MS = 2_000;

/** Where a watch gets its clients and its wake-up: the registry's EtcdClient. */
export interface WatchSource {
  /** Options for a fresh client (TLS files as they are on disk now). */
  clientOptions(): IOptions;
  /** Aborted when etcd answers again after a failure (then replaced): waiting and stalled attempts go at once. */
  readonly recovered: AbortSignal;
}

export interface WatchEvents {
  onData(res: IWatchResponse): void;
  /** etcd cancelled the watch (its revision was compacted): it will deliver nothing more. */
  onCancelled(err: Error): void;
  onDisconnect(err: Error): void;
  onConnect(): void;
}

/** etcd cancelled the watch (its revision was compacted): trying again cannot help. */
class WatchCancelled extends Error {
  constructor(readonly reason: Error) {
    super(reason.message);
  }
}

/**
 * The changes since the watch's revision do not fit one response (the gRPC receive limit: a backlog of
 * huge values written while we were cut off). Resuming from that revision would fail the same way for
 * ever; the owner reads the current state instead, as after a compaction.
 */
class CatchUpTooLarge extends WatchCancelled {}

/** etcd answers again while this attempt is still connecting (perhaps into a black hole): a fresh one, at once. */
class Superseded extends Error {}

interface Attempt {
  client: Etcd3;
  watcher: Watcher;
  connected: boolean;
}

export class ResumableWatch {
  /** The revision to resume from: the one after the last event (or progress notice) delivered. */
  private next: string | undefined;
  private readonly stopper = new AbortController();
  private readonly backoff = jitteredBackoff(RECONNECT_MIN_MS, RECONNECT_MAX_MS);
  /** The connection attempt in use, connected or not. */
  private current: Attempt | null = null;
  private running: Promise<void> | null = null;
  private onFirstConnect: (() => void) | null = null;
  private onStartFailed: ((err: Error) => void) | null = null;

  constructor(
    private readonly source: WatchSource,
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
    this.running = this.run();
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

  /** Connection attempts until stopped or cancelled by etcd. */
  private async run(): Promise<void> {
    try {
      await retry((signal) => this.attempt(signal!), {
        signal: this.stopper.signal,
        backoff: this.backoff,
        wakeup: () => this.source.recovered,
        retryIf: (err) => !(err instanceof WatchCancelled),
        onError: (err) => {
          if (!(err instanceof Superseded)) this.events.onDisconnect(err as Error);
        },
      });
    } catch (err) {
      if (isAbort(err) || this.stopper.signal.aborted) return;
      const reason = err instanceof WatchCancelled ? err.reason : (err as Error);
      // While start() waits, it reports the failure to its caller instead.
      if (this.onStartFailed) this.onStartFailed(reason);
      else this.events.onCancelled(reason);
    }
  }

  /**
   * One connection on a client of its own. Never resolves: it ends when the connection is lost or
   * gets nowhere within ATTEMPT_TIMEOUT_MS (retried), when etcd answers again while it is still
   * connecting (retried at once), when etcd cancels the watch or its catch-up cannot be received (not
   * retried: the owner lists again), or when the watch is stopped.
   */
  private attempt(signal: AbortSignal): Promise<never> {
    const wake = this.source.recovered;
    return new Promise<never>((_resolve, reject) => {
      const client = new Etcd3(this.source.clientOptions());
      const builder = this.build(client);
      if (this.next !== undefined) builder.startRevision(this.next);
      const watcher = builder.watcher();
      const attempt: Attempt = { client, watcher, connected: false };
      this.current = attempt;
      const settle = (err: unknown): void => {
        clearTimeout(timer);
        wake.removeEventListener('abort', onWake);
        signal.removeEventListener('abort', onStop);
        reject(err);
      };
      // Takes this attempt out of use and ends it; stop() disposes of a stopped one itself.
      const end = (err: Error, cancelledByEtcd = false): void => {
        if (this.current !== attempt) return;
        this.current = null;
        detach(watcher);
        // A watch etcd cancelled must not be cancelled again (see stop()); any other is taken off its
        // client's list first, or the client would keep re-establishing a stream for it.
        if (!cancelledByEtcd) void watcher.cancel().catch(() => undefined);
        client.close();
        settle(err);
      };
      const onWake = (): void => {
        if (!attempt.connected) end(new Superseded('etcd answers again; connecting afresh'));
      };
      const onStop = (): void => settle(abortReason(signal));
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
        attempt.connected = true;
        clearTimeout(timer);
        this.backoff.reset();
        this.events.onConnect();
        this.onFirstConnect?.();
      });
      watcher.on('disconnected', (err: Error) => {
        if (!isResponseTooLarge(err)) return end(err);
        const from = this.next ?? 'now';
        end(new CatchUpTooLarge(new Error(`the changes since revision ${from} are larger than one etcd response may be (${err.message}): reading the current state instead`)));
      });
      watcher.on('error', (err: Error) => end(new WatchCancelled(err), true));
      watcher.on('end', () => end(new WatchCancelled(new Error('watch ended')), true));
      const timer = setTimeout(() => end(new EtcdTimeoutError('connecting a watch', ATTEMPT_TIMEOUT_MS)), ATTEMPT_TIMEOUT_MS);
      wake.addEventListener('abort', onWake, { once: true });
      signal.addEventListener('abort', onStop, { once: true });
    });
  }

  /**
   * Cancels the watch. One that etcd already cancelled must not be cancelled again: etcd3 would
   * send a cancel for an ID etcd no longer knows and wait forever for the reply. The wait is
   * bounded in any case, since callers run it inside the lease manager's queue.
   */
  async stop(): Promise<void> {
    if (this.stopper.signal.aborted) return;
    const attempt = this.current;
    this.current = null;
    this.stopper.abort();
    if (attempt) {
      detach(attempt.watcher);
      if (attempt.connected) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          attempt.watcher.cancel().catch(() => undefined),
          new Promise<void>((resolve) => {
            timer = setTimeout(resolve, CANCEL_TIMEOUT_MS);
          }),
        ]);
        clearTimeout(timer);
      }
      attempt.client.close();
    }
    await this.running;
  }
}

/** The watcher's late events are ignored from now on. */
function detach(watcher: Watcher): void {
  watcher.removeAllListeners();
  watcher.on('error', () => undefined);
}
