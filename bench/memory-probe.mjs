// Preloaded into a daemon by bench/memory.ts (NODE_OPTIONS=--import=<this file>); plain JS so the
// product's node runs it without tsx. On SIGUSR2 it writes the process's memory figures as JSON to
// $MEMPROBE_DIR/<pid>.stats.json, and, when $MEMPROBE_DIR/<pid>.snapshot-request exists, a heap
// snapshot to $MEMPROBE_DIR/<pid>.heapsnapshot (the request file is removed once it is written).
// It allocates nothing until signalled, so the figures sampled before a signal are the daemon's own.
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import v8 from 'node:v8';

const dir = process.env.MEMPROBE_DIR;
if (dir) {
  process.on('SIGUSR2', () => {
    const base = join(dir, String(process.pid));
    const status = readFileSync('/proc/self/status', 'utf8');
    const kib = (key) => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(status)?.[1] ?? NaN);
    let rollup = '';
    try {
      rollup = readFileSync('/proc/self/smaps_rollup', 'utf8');
    } catch {
      /* older kernels */
    }
    const roll = (key) => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(rollup)?.[1] ?? NaN);
    const mu = process.memoryUsage();
    const stats = {
      status: { rss: kib('VmRSS'), anon: kib('RssAnon'), file: kib('RssFile'), shmem: kib('RssShmem'), threads: kib('Threads') },
      smaps: { privateDirty: roll('Private_Dirty'), privateClean: roll('Private_Clean'), sharedClean: roll('Shared_Clean'), pss: roll('Pss') },
      memoryUsage: mu,
      heap: v8.getHeapStatistics(),
      spaces: v8.getHeapSpaceStatistics().map((s) => ({ name: s.space_name, size: s.space_size, used: s.space_used_size, committed: s.physical_space_size })),
      code: v8.getHeapCodeStatistics(),
    };
    writeFileSync(`${base}.stats.tmp`, JSON.stringify(stats));
    renameSync(`${base}.stats.tmp`, `${base}.stats.json`);
    if (existsSync(`${base}.snapshot-request`)) {
      v8.writeHeapSnapshot(`${base}.heapsnapshot.tmp`);
      renameSync(`${base}.heapsnapshot.tmp`, `${base}.heapsnapshot`);
      rmSync(`${base}.snapshot-request`, { force: true });
    }
  });
}
