// The shared helpers every module leans on: the serial queue, the backoff and the atomic file writer
// (the scheduler has its own file, scheduler.unit.test.ts).
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { writeFileAtomic } from '../src/common/atomic-file.js';
import { Backoff } from '../src/common/retry.js';
import { SerialQueue } from '../src/common/serial-queue.js';

const tick = () => new Promise<void>((r) => setImmediate(r));

describe('SerialQueue', () => {
  it('runs tasks one at a time, in order, and a failure does not stop the next', async () => {
    const q = new SerialQueue();
    const log: string[] = [];
    const task = (name: string, fail = false) => async () => {
      log.push(`start ${name}`);
      await tick();
      log.push(`end ${name}`);
      if (fail) throw new Error(name);
      return name;
    };
    const a = q.run(task('a'));
    const b = q.run(task('b', true));
    const c = q.run(task('c'));
    await expect(a).resolves.toBe('a');
    await expect(b).rejects.toThrow('b');
    await expect(c).resolves.toBe('c');
    expect(log).toEqual(['start a', 'end a', 'start b', 'end b', 'start c', 'end c']);
  });
});

describe('Backoff', () => {
  it('doubles from the minimum to the cap, and starts over after reset', () => {
    const b = new Backoff(500, 3000);
    expect([b.next(), b.next(), b.next(), b.next(), b.next()]).toEqual([500, 1000, 2000, 3000, 3000]);
    b.reset();
    expect(b.peek()).toBe(500);
  });
});

describe('writeFileAtomic', () => {
  const dir = mkdtempSync(join(tmpdir(), 'flannel-atomic-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('replaces the file whole, leaves no temporary file, and never follows a planted link', () => {
    const path = join(dir, 'sub', 'file.env');
    writeFileAtomic(path, 'A=1\n');
    writeFileAtomic(path, 'A=2\n', 0o600);
    expect(readFileSync(path, 'utf8')).toBe('A=2\n');
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(readdirSync(join(dir, 'sub'))).toEqual(['file.env']);
    // A link planted where the file goes is replaced, not written through.
    const victim = join(dir, 'victim');
    writeFileSync(victim, 'keep');
    const linked = join(dir, 'linked.env');
    symlinkSync(victim, linked);
    writeFileAtomic(linked, 'A=3\n');
    expect(readFileSync(victim, 'utf8')).toBe('keep');
    expect(readFileSync(linked, 'utf8')).toBe('A=3\n');
  });
  it('without the sync: the same replacement, the same mode; a failed rename leaves no temporary file', () => {
    const path = join(dir, 'nosync', 'conf');
    writeFileAtomic(path, '{"a":1}', 0o600, { sync: false });
    writeFileAtomic(path, '{"a":2}', 0o600, { sync: false });
    expect(readFileSync(path, 'utf8')).toBe('{"a":2}');
    expect(statSync(path).mode & 0o777).toBe(0o600);
    // Renaming a file over a directory fails: the error comes back, the temporary file goes.
    mkdirSync(join(dir, 'nosync', 'taken'));
    expect(() => writeFileAtomic(join(dir, 'nosync', 'taken'), 'x', 0o644, { sync: false })).toThrow(/EISDIR|directory/);
    expect(readdirSync(join(dir, 'nosync')).sort()).toEqual(['conf', 'taken']);
  });
});
