// What each import costs the daemon's process at start: every case runs in a fresh `node` (the
// same binary bin/flanneld execs), imports one module (or the daemon's whole graph), lets the
// process settle, forces a full GC and reports RSS, anonymous RSS, JS heap used, external memory
// and thread count. Cases run interleaved, ROUNDS times, and the median is reported, because the
// machine is shared and noisy. Run: npx tsx bench/memory-imports.ts [--rounds=N] [--json] [--levers] [--cumulative] [--leave-one-out] [--node-flags="..."]
// (--levers: the whole graph under node flags and environment variables that trade memory for speed;
// --cumulative: the daemon's dependencies added one at a time; --leave-one-out: all but one).
import { runNodeScript } from './node-child.js';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '../testbed/cluster.js';

export interface ImportCase {
  name: string;
  /** Module specifiers (bare, or absolute file paths) imported one after the other. */
  imports: string[];
  /** Extra node flags for this case. */
  nodeFlags?: string[];
  env?: Record<string, string>;
}

export interface ImportFigures {
  rssKiB: number;
  anonKiB: number;
  fileKiB: number;
  heapUsedKiB: number;
  heapTotalKiB: number;
  externalKiB: number;
  arrayBuffersKiB: number;
  threads: number;
}

// Runs inside the child: import, settle, GC, then print /proc/self/status and memoryUsage as JSON.
const PROBE = `
const mods = JSON.parse(process.env.MEMBENCH_IMPORTS);
const { createRequire } = await import('node:module');
const require = createRequire(process.cwd() + '/');
for (const m of mods) {
  if (m.endsWith('.node')) require(m); else await import(m.startsWith('/') ? 'file://' + m : m);
}
await new Promise((r) => setTimeout(r, 700));
globalThis.gc?.();
await new Promise((r) => setTimeout(r, 300));
const { readFileSync } = await import('node:fs');
const st = readFileSync('/proc/self/status', 'utf8');
const kb = (k) => Number(new RegExp(k + ':\\\\s+(\\\\d+)').exec(st)?.[1] ?? NaN);
const mu = process.memoryUsage();
console.log(JSON.stringify({
  rssKiB: kb('VmRSS'), anonKiB: kb('RssAnon'), fileKiB: kb('RssFile'),
  heapUsedKiB: Math.round(mu.heapUsed / 1024), heapTotalKiB: Math.round(mu.heapTotal / 1024),
  externalKiB: Math.round(mu.external / 1024), arrayBuffersKiB: Math.round(mu.arrayBuffers / 1024),
  threads: kb('Threads'),
}));
`;

export function measureImport(c: ImportCase): Promise<ImportFigures> {
  return runNodeScript<ImportFigures>(c.name, PROBE, c.nodeFlags ?? [], { ...c.env, MEMBENCH_IMPORTS: JSON.stringify(c.imports) });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

export function medianFigures(runs: ImportFigures[]): ImportFigures {
  const keys = Object.keys(runs[0]!) as (keyof ImportFigures)[];
  return Object.fromEntries(keys.map((k) => [k, median(runs.map((r) => r[k]))])) as unknown as ImportFigures;
}

export function defaultCases(): ImportCase[] {
  const root = repoRoot();
  const dist = (p: string) => join(root, 'dist', p);
  if (!existsSync(dist('daemon/daemon.js'))) throw new Error('dist/ is missing: run npm run build first');
  const addon = join(root, 'build', 'Release', 'flannel_native.node');
  return [
    { name: 'bare node', imports: [] },
    { name: 'pino', imports: ['pino'] },
    { name: 'yargs', imports: ['yargs'] },
    { name: 'prom-client', imports: ['prom-client'] },
    { name: '@grpc/grpc-js', imports: ['@grpc/grpc-js'] },
    { name: 'etcd3 (grpc-js + protobufjs)', imports: ['etcd3'] },
    { name: 'native addon', imports: [addon] },
    { name: 'dist/common/log.js', imports: [dist('common/log.js')] },
    { name: 'dist/daemon/flags.js', imports: [dist('daemon/flags.js')] },
    { name: 'dist/common/metrics.js', imports: [dist('common/metrics.js')] },
    { name: 'dist/etcd/registry.js', imports: [dist('etcd/registry.js')] },
    { name: 'dist/backend/index.js', imports: [dist('backend/index.js')] },
    { name: 'dist/daemon/daemon.js (whole graph)', imports: [dist('daemon/flags.js'), dist('common/log.js'), dist('daemon/daemon.js')] },
  ];
}

/** The daemon's whole import graph under each cheap process-level lever. */
export function leverCases(): ImportCase[] {
  const whole = defaultCases().at(-1)!;
  const c = (name: string, nodeFlags: string[], env: Record<string, string> = {}): ImportCase => ({ name, imports: whole.imports, nodeFlags, env });
  return [
    c('whole graph, no lever', []),
    c('MALLOC_ARENA_MAX=2', [], { MALLOC_ARENA_MAX: '2' }),
    c('UV_THREADPOOL_SIZE=1', [], { UV_THREADPOOL_SIZE: '1' }),
    c('--v8-pool-size=1', ['--v8-pool-size=1']),
    c('--max-semi-space-size=1', ['--max-semi-space-size=1']),
    c('--max-old-space-size=64', ['--max-old-space-size=64']),
    c('--optimize-for-size', ['--optimize-for-size']),
    c('--lite-mode', ['--lite-mode']),
    c('--jitless', ['--jitless']),
    c('--no-opt --max-lazy', ['--no-opt', '--max-lazy']),
    c('semi 1 + v8-pool 1 + arenas 2 + uv 1', ['--max-semi-space-size=1', '--v8-pool-size=1'], { MALLOC_ARENA_MAX: '2', UV_THREADPOOL_SIZE: '1' }),
    c('same + --optimize-for-size', ['--max-semi-space-size=1', '--v8-pool-size=1', '--optimize-for-size'], { MALLOC_ARENA_MAX: '2', UV_THREADPOOL_SIZE: '1' }),
    c('same + --lite-mode', ['--max-semi-space-size=1', '--v8-pool-size=1', '--lite-mode'], { MALLOC_ARENA_MAX: '2', UV_THREADPOOL_SIZE: '1' }),
  ];
}

/** Imports added one at a time, in the daemon's order: what each costs on top of the others. */
export function cumulativeCases(): ImportCase[] {
  const root = repoRoot();
  const steps: [string, string][] = [
    ['+ pino', 'pino'], ['+ yargs', 'yargs'], ['+ prom-client', 'prom-client'], ['+ etcd3', 'etcd3'],
    ['+ native addon', join(root, 'build', 'Release', 'flannel_native.node')],
    ['+ dist/daemon/flags.js, log.js, daemon.js', join(root, 'dist', 'daemon', 'daemon.js')],
  ];
  const cases: ImportCase[] = [{ name: 'bare node', imports: [] }];
  for (const [name, spec] of steps) cases.push({ name, imports: [...cases.at(-1)!.imports, spec] });
  return cases;
}

/** The daemon's four dependencies and the addon, each left out once: what dropping one would save. */
export function leaveOneOutCases(): ImportCase[] {
  const deps: [string, string][] = [
    ['pino', 'pino'], ['yargs', 'yargs'], ['prom-client', 'prom-client'], ['etcd3', 'etcd3'],
    ['native addon', join(repoRoot(), 'build', 'Release', 'flannel_native.node')],
  ];
  return [
    { name: 'all dependencies', imports: deps.map(([, s]) => s) },
    ...deps.map(([name]) => ({ name: `all but ${name}`, imports: deps.filter(([n]) => n !== name).map(([, s]) => s) })),
    { name: 'all but yargs, with node:util parseArgs', imports: [...deps.filter(([n]) => n !== 'yargs').map(([, s]) => s), 'node:util'] },
  ];
}

async function main(): Promise<void> {
  const roundsArg = process.argv.find((a) => a.startsWith('--rounds='));
  const rounds = roundsArg ? Number(roundsArg.slice('--rounds='.length)) : 5;
  // --node-flags="..." runs every case under these flags too (e.g. bin/flanneld's).
  const extra = (process.argv.find((a) => a.startsWith('--node-flags='))?.slice('--node-flags='.length) ?? '').split(' ').filter(Boolean);
  const chosen = process.argv.includes('--levers') ? leverCases() : process.argv.includes('--cumulative') ? cumulativeCases()
    : process.argv.includes('--leave-one-out') ? leaveOneOutCases() : defaultCases();
  const cases = chosen.map((c) => ({ ...c, nodeFlags: [...extra, ...(c.nodeFlags ?? [])] }));
  const results = new Map<string, ImportFigures[]>(cases.map((c) => [c.name, []]));
  for (let r = 0; r < rounds; r++) {
    for (const c of cases) results.get(c.name)!.push(await measureImport(c));
  }
  const rows = cases.map((c) => ({ name: c.name, ...medianFigures(results.get(c.name)!) }));
  if (process.argv.includes('--json')) {
    console.log(JSON.stringify(rows, null, 2));
    return;
  }
  const base = rows[0]!;
  const mb = (kib: number) => (kib / 1024).toFixed(1);
  console.log(`median of ${rounds} fresh processes each (node ${process.version}${extra.length ? `, ${extra.join(' ')}` : ''}), after import + 1 s + full GC`);
  console.log(`| case | RSS MB | Δ RSS vs first | anon MB | file MB | heap used MB | heap total MB | external MB | threads |`);
  console.log('|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const d = r.rssKiB - base.rssKiB;
    console.log(`| ${r.name} | ${mb(r.rssKiB)} | ${d >= 0 ? '+' : ''}${mb(d)} | ${mb(r.anonKiB)} | ${mb(r.fileKiB)} | ${mb(r.heapUsedKiB)} | ${mb(r.heapTotalKiB)} | ${mb(r.externalKiB)} | ${r.threads} |`);
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
