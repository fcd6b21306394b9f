// Is the memory of a start-up-only dependency (yargs, for the flags) given back once it is used?
// Fresh `node` processes load the daemon's other dependencies (pino, prom-client, etcd3), then parse
// a daemon command line with the product's parseDaemonFlags (dist/daemon/flags.js): not at all, in
// the main thread (the ES module and its code stay loaded for the life of the process), or in a
// worker thread that exits after posting the parsed options back (its isolate is torn down). RSS
// after a settle and a full GC, median of ROUNDS. npx tsx bench/flags-parse-memory.ts [--rounds=5]
// [--node-flags="--lite-mode --no-expose-wasm"]
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { repoRoot } from '../test/harness/cluster.js';

type Mode = 'none' | 'main' | 'worker';

const CHILD = `
const mode = process.env.PARSE_MODE;
const flagsUrl = process.env.FLAGS_URL;
await import('pino'); await import('prom-client'); await import('etcd3');
const argv = ['--etcd-endpoints=http://198.18.0.254:2379', '--iface=eth0', '--ip-masq', '--healthz-port=8471'];
let parsed;
if (mode === 'main') {
  const { parseDaemonFlags } = await import(flagsUrl);
  parsed = parseDaemonFlags(argv);
} else if (mode === 'worker') {
  const { Worker } = await import('node:worker_threads');
  // The eval'd worker inherits --input-type=module: ES module syntax.
  const code = 'import { parentPort, workerData } from "node:worker_threads";' +
    'const m = await import(workerData.url); parentPort.postMessage(JSON.parse(JSON.stringify(m.parseDaemonFlags(workerData.argv))));';
  parsed = await new Promise((resolve, reject) => {
    const w = new Worker(code, { eval: true, workerData: { url: flagsUrl, argv } });
    w.once('message', (m) => { resolve(m); void w.terminate(); });
    w.once('error', reject);
  });
}
if (mode !== 'none' && !parsed?.etcd?.endpoints) throw new Error('flags not parsed: ' + JSON.stringify(parsed));
await new Promise((r) => setTimeout(r, 1500));
globalThis.gc();
await new Promise((r) => setTimeout(r, 500));
const { readFileSync } = await import('node:fs');
const st = readFileSync('/proc/self/status', 'utf8');
const kb = (k) => Number(new RegExp(k + ':\\\\s+(\\\\d+)').exec(st)?.[1] ?? NaN);
const mu = process.memoryUsage();
console.log(JSON.stringify({ rssKiB: kb('VmRSS'), anonKiB: kb('RssAnon'), heapUsedKiB: Math.round(mu.heapUsed / 1024), threads: kb('Threads') }));
`;

interface Figures {
  rssKiB: number;
  anonKiB: number;
  heapUsedKiB: number;
  threads: number;
}

function measure(mode: Mode, nodeFlags: string[]): Promise<Figures> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--expose-gc', ...nodeFlags, '--input-type=module', '-e', CHILD], {
      cwd: repoRoot(),
      env: { ...process.env, PARSE_MODE: mode, FLAGS_URL: `file://${join(repoRoot(), 'dist', 'daemon', 'flags.js')}` },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop()!) as Figures) : reject(new Error(`${mode}: ${err.slice(-1500)}`))));
  });
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const rounds = Number(arg('rounds') ?? 5);
  const nodeFlags = (arg('node-flags') ?? '').split(' ').filter(Boolean);
  const modes: Mode[] = ['none', 'main', 'worker'];
  const runs = new Map<Mode, Figures[]>(modes.map((m) => [m, []]));
  for (let r = 0; r < rounds; r++) for (const m of modes) runs.get(m)!.push(await measure(m, nodeFlags));
  const mb = (kib: number) => (kib / 1024).toFixed(1);
  console.log(`median of ${rounds}; node flags: ${nodeFlags.join(' ') || 'none'}; pino, prom-client and etcd3 loaded in every process`);
  console.log('| flags parsed | RSS MB | anon MB | heap used MB | threads |');
  console.log('|---|---|---|---|---|');
  for (const [m, figs] of runs) {
    const med = (k: keyof Figures) => median(figs.map((f) => f[k]));
    console.log(`| ${m === 'none' ? 'not at all' : m === 'main' ? 'yargs in the main thread' : 'yargs in a worker that exits'} | ${mb(med('rssKiB'))} | ${mb(med('anonKiB'))} | ${mb(med('heapUsedKiB'))} | ${med('threads')} |`);
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
