// The retry loop, the pause, the periodic task and the coalescing scheduler: the mechanisms every
// retrying or reconciling part of the daemon uses. Real timers with short intervals; bounds are lower
// bounds only, so that a busy machine cannot fail them.
import { describe, expect, it } from 'vitest';
import { Backoff, Wakeup, isAbort, pause, pauseOn, retry } from '../src/common/retry.js';
import { ManualClock } from './harness/manual-clock.js';
import { Scheduler, every } from '../src/common/scheduler.js';

const tick = () => new Promise<void>((r) => setImmediate(r));
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(5);
  }
}

describe('Backoff with jitter', () => {
  it('spreads each delay of the doubling schedule by at most the jitter, either way', () => {
    const low = new Backoff(100, 800, 0.25, () => 0);
    expect([low.next(), low.next(), low.next(), low.next(), low.next()]).toEqual([75, 150, 300, 600, 600]);
    const high = new Backoff(100, 800, 0.25, () => 0.999999);
    expect(high.next()).toBe(125);
    const any = new Backoff(1000, 1000, 0.25);
    for (let i = 0; i < 200; i++) {
      const d = any.next();
      expect(d).toBeGreaterThanOrEqual(750);
      expect(d).toBeLessThanOrEqual(1250);
    }
  });
});

describe('pause', () => {
  it('ends when any of its signals is aborted, and at once when one already is', async () => {
    const stop = new AbortController();
    const wake = new AbortController();
    const started = Date.now();
    const p = pause(60_000, stop.signal, wake.signal);
    wake.abort();
    await p;
    expect(Date.now() - started).toBeLessThan(30_000);
    await pause(60_000, AbortSignal.abort());
    await pause(1); // no signal: just the timer
  });
});

describe('retry', () => {
  it('tries again after each failure with the backoff delays, and resolves with the result', async () => {
    let calls = 0;
    const seen: [string, number, number][] = [];
    const result = await retry(
      async () => {
        if (++calls < 4) throw new Error(`fail ${calls}`);
        return 'done';
      },
      { backoff: new Backoff(1, 4), onError: (err, ms, failures) => seen.push([(err as Error).message, ms, failures]) },
    );
    expect(result).toBe('done');
    expect(seen).toEqual([['fail 1', 1, 1], ['fail 2', 2, 2], ['fail 3', 4, 3]]);
  });

  it('waits with the given wait, capped by maxDelayMs, and rejects at once with an error retryIf refuses', async () => {
    const waited: number[] = [];
    let calls = 0;
    await retry(
      async () => {
        if (++calls < 3) throw new Error('again');
      },
      { backoff: new Backoff(100, 1000), maxDelayMs: () => 7, wait: async (ms) => void waited.push(ms) },
    );
    expect(waited).toEqual([7, 7]);
    const fatal = new Error('fatal');
    await expect(retry(async () => Promise.reject(fatal), { retryIf: (e) => e !== fatal })).rejects.toBe(fatal);
  });

  it('stops when its signal is aborted, during a wait, with an AbortError', async () => {
    const stop = new AbortController();
    let calls = 0;
    const loop = retry(async () => {
      calls++;
      throw new Error('down');
    }, { signal: stop.signal, backoff: new Backoff(60_000, 60_000) });
    await until(() => calls === 1);
    stop.abort();
    const err = await loop.catch((e: unknown) => e);
    expect(isAbort(err)).toBe(true);
    expect(calls).toBe(1);
    await expect(retry(async () => 'never', { signal: AbortSignal.abort() })).rejects.toSatisfy(isAbort);
  });
});

describe('retry with a wake-up', () => {
  it('a wake-up ends the wait after a failure at once; one during a failing attempt skips the wait', async () => {
    const back = new Wakeup();
    let calls = 0;
    const started = Date.now();
    const loop = retry(async () => {
      calls++;
      if (calls === 2) back.wake(); // "the store is back" while this attempt fails
      if (calls < 3) throw new Error('down');
      return calls;
    }, { backoff: new Backoff(60_000, 60_000), wakeup: () => back.signal });
    await until(() => calls === 1);
    back.wake();
    expect(await loop).toBe(3);
    expect(Date.now() - started).toBeLessThan(30_000);
  });

  it('waits on the given clock', async () => {
    const clock = new ManualClock();
    let done = false;
    void pauseOn(clock, 5_000).then(() => (done = true));
    await clock.advance(4_999);
    expect(done).toBe(false);
    await clock.advance(1);
    expect(done).toBe(true);
  });
});

describe('every', () => {
  it('runs the task periodically, never two at once, until aborted; a failure does not stop it', async () => {
    const stop = new AbortController();
    let running = 0;
    let maxRunning = 0;
    let runs = 0;
    const errors: unknown[] = [];
    every(5, async () => {
      running++;
      maxRunning = Math.max(maxRunning, running);
      await sleep(15);
      running--;
      runs++;
      if (runs === 2) throw new Error('once');
    }, { signal: stop.signal, onError: (e) => errors.push(e) });
    await until(() => runs >= 4);
    stop.abort();
    const at = runs;
    await sleep(60);
    expect(runs).toBeLessThanOrEqual(at + 1); // at most the run in flight finishes
    expect(maxRunning).toBe(1);
    expect(errors).toHaveLength(1);
  });
});

describe('Scheduler', () => {
  it('requests made while a pass runs share one more pass, with every reason; errors go to onError, never to callers', async () => {
    const stop = new AbortController();
    const seen: string[][] = [];
    const errors: unknown[] = [];
    let fail = false;
    const s = new Scheduler<string>({
      signal: stop.signal,
      pass: async (reasons) => {
        seen.push([...reasons].sort());
        await sleep(20);
        if (fail) throw new Error('refused');
      },
      onError: (err) => errors.push(err),
    });
    const first = s.request('a');
    await until(() => seen.length === 1);
    const during = [s.request('b'), s.request('c'), s.request('b')];
    await Promise.all([first, ...during]);
    expect(seen).toEqual([['a'], ['b', 'c']]);
    fail = true;
    await expect(s.request('e')).resolves.toBeUndefined();
    expect(errors).toHaveLength(1);
    expect(s.passes).toBe(3);
    await s.idle();
    expect(s.busy).toBe(false);
    stop.abort();
  });

  it('requests made in one turn of the event loop share one pass', async () => {
    const stop = new AbortController();
    let passes = 0;
    const s = new Scheduler<'event'>({ signal: stop.signal, pass: async () => void passes++, onError: () => undefined });
    await Promise.all(Array.from({ length: 50 }, () => s.request('event')));
    expect(passes).toBe(1);
    stop.abort();
  });

  it('spaces passes by a multiple of the last pass cost', async () => {
    const stop = new AbortController();
    const starts: number[] = [];
    const ends: number[] = [];
    const s = new Scheduler<'event'>({
      signal: stop.signal,
      spacing: 3,
      pass: async () => {
        starts.push(performance.now());
        await sleep(20);
        ends.push(performance.now());
      },
      onError: () => undefined,
    });
    await s.request('event');
    await s.request('event');
    const cost = ends[0]! - starts[0]!;
    expect(starts[1]! - ends[0]!).toBeGreaterThanOrEqual(3 * cost - 2);
    stop.abort();
  });

  it('runs the periodic pass once started, and stopping answers waiting requests and ends the period', async () => {
    const stop = new AbortController();
    const reasons: string[] = [];
    let release: (() => void) | null = null;
    const s = new Scheduler<'event' | 'resync'>({
      signal: stop.signal,
      periodic: { intervalMs: 5, reason: 'resync' },
      pass: async (r) => {
        reasons.push(...r);
        if (r.has('event')) await new Promise<void>((resolve) => (release = resolve));
      },
      onError: () => undefined,
    });
    s.startPeriodic();
    s.startPeriodic();
    await until(() => reasons.filter((r) => r === 'resync').length >= 3);
    const blocked = s.request('event');
    await until(() => release !== null);
    const waiting = s.request('event'); // queued behind the blocked pass
    stop.abort();
    release!();
    await blocked;
    await waiting; // answered though its pass never runs
    const count = reasons.length;
    await sleep(40);
    expect(reasons.length).toBe(count);
    await tick();
    await expect(s.request('event')).resolves.toBeUndefined();
  });
});

describe('Scheduler.exclusive', () => {
  it('runs a task between passes, never during one, with its own outcome; stopping rejects tasks not yet run', async () => {
    const stop = new AbortController();
    const log: string[] = [];
    let release: (() => void) | null = null;
    const s = new Scheduler<'event'>({
      signal: stop.signal,
      pass: async () => {
        log.push('pass start');
        await new Promise<void>((resolve) => (release = resolve));
        log.push('pass end');
      },
      onError: () => undefined,
    });
    const pass = s.request('event');
    await until(() => release !== null);
    const task = s.exclusive(async () => {
      log.push('task');
      return 42;
    });
    const failing = s.exclusive(async () => {
      throw new Error('refused');
    });
    const next = s.request('event'); // asked for after the tasks: runs after them
    await tick();
    expect(log).toEqual(['pass start']);
    const first = release!;
    release = null;
    first();
    await pass;
    await expect(task).resolves.toBe(42);
    await expect(failing).rejects.toThrow('refused');
    await until(() => release !== null);
    expect(log).toEqual(['pass start', 'pass end', 'task', 'pass start']);
    const blocked = s.exclusive(async () => 'never');
    stop.abort();
    release!();
    await next;
    await expect(blocked).rejects.toSatisfy(isAbort);
    await expect(s.exclusive(async () => 'late')).rejects.toSatisfy(isAbort);
  });
});
