// The runtime's side of bench/cni.ts, run inside the node's network namespace (as kubelet's runtime
// runs in the host's): it drives each plugin variant with `cnitool` (containernetworking/cni's
// reference client: a conflist, the CNI_* variables, one process per operation) or, without cnitool,
// executes the conflist's plugins itself the way libcni does (each plugin with the CNI_* variables
// and its conf on stdin, the previous result passed on as prevResult). It times each operation from
// spawn to exit, and measures CPU time from /proc: the children this process reaped (the client,
// cnitool, the plugins, Node for the standalone plugin, the delegates they ran) plus, for variants
// served by flanneld, flanneld's own time and its reaped children's (the delegates it ran).
// Reads its plan as JSON on stdin, writes its results as JSON on stdout.
import { spawn, spawnSync } from 'node:child_process';
import { accessSync, constants, readFileSync } from 'node:fs';
import { join } from 'node:path';

export interface DriverVariant {
  name: string;
  /** The directory holding the conflist `cbr0.conflist`. */
  confDir: string;
  cniPath: string;
  env: Record<string, string>;
  /** flanneld serves this variant: its CPU time counts. */
  servedByDaemon: boolean;
}

export interface DriverPlan {
  variants: DriverVariant[];
  pods: string[];
  rounds: number;
  warmup: number;
  burstSizes: number[];
  bursts: number;
  daemonPid: number;
  /** cnitool's path, or null to execute the conflist's plugins directly. */
  cnitool: string | null;
}

export interface BurstSample {
  size: number;
  addWallMs: number;
  addCpuMs: number;
  delWallMs: number;
  delCpuMs: number;
}

export interface DriverResult {
  variant: string;
  addMs: number[];
  delMs: number[];
  /** CPU per ADD and per DEL, over the latency rounds. */
  addCpuMs: number;
  delCpuMs: number;
  bursts: BurstSample[];
}

const TICK_MS = 1000 / Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim() || '100');

/** utime, stime, cutime, cstime of a process, in ms. */
function cpuOf(pid: number | 'self'): { own: number; children: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces), 1-based: 14 utime ... 17 cstime.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const [utime, stime, cutime, cstime] = [11, 12, 13, 14].map((i) => Number(f[i]) * TICK_MS);
  return { own: utime! + stime!, children: cutime! + cstime! };
}

function cpuNow(plan: DriverPlan, v: DriverVariant): number {
  const daemon = v.servedByDaemon ? cpuOf(plan.daemonPid) : { own: 0, children: 0 };
  return cpuOf('self').children + daemon.own + daemon.children;
}

interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
}

function exec(argv: string[], env: Record<string, string>, input: string): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0]!, argv.slice(1), { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    child.stdin.on('error', () => {});
    child.stdin.end(input);
  });
}

function findPlugin(type: string, cniPath: string): string {
  for (const dir of cniPath.split(':')) {
    try {
      accessSync(join(dir, type), constants.X_OK);
      return join(dir, type);
    } catch {
      /* next */
    }
  }
  throw new Error(`no plugin ${type} in ${cniPath}`);
}

/** ADD results of the direct driver, for DEL's prevResult (libcni keeps them in its cache). */
const cached = new Map<string, unknown>();

/** One ADD or DEL of the conflist for `pod`: the whole runtime operation. */
async function operation(plan: DriverPlan, v: DriverVariant, command: 'add' | 'del', pod: string): Promise<Outcome> {
  const netns = `/var/run/netns/${pod}`;
  const base = { PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin', CNI_PATH: v.cniPath, ...v.env };
  if (plan.cnitool) return exec([plan.cnitool, command, 'cbr0', netns], { ...base, NETCONFPATH: v.confDir }, '');
  const list = JSON.parse(readFileSync(join(v.confDir, 'cbr0.conflist'), 'utf8')) as { name: string; cniVersion: string; plugins: Record<string, unknown>[] };
  const key = `${v.name}/${pod}`;
  const env = { ...base, CNI_COMMAND: command.toUpperCase(), CNI_CONTAINERID: `bench-${pod}`, CNI_NETNS: netns, CNI_IFNAME: 'eth0' };
  const plugins = command === 'add' ? list.plugins : [...list.plugins].reverse();
  let prev: unknown = command === 'del' ? cached.get(key) : undefined;
  for (const p of plugins) {
    const conf = { ...p, name: list.name, cniVersion: list.cniVersion, ...(prev !== undefined ? { prevResult: prev } : {}) };
    const out = await exec([findPlugin(String(p['type']), v.cniPath)], env, JSON.stringify(conf));
    if (out.code !== 0) return out;
    if (command === 'add') prev = JSON.parse(out.stdout);
  }
  if (command === 'add') cached.set(key, prev);
  else cached.delete(key);
  return { code: 0, stdout: command === 'add' ? JSON.stringify(prev) : '', stderr: '' };
}

async function timed(plan: DriverPlan, v: DriverVariant, command: 'add' | 'del', pod: string): Promise<number> {
  const t0 = process.hrtime.bigint();
  const out = await operation(plan, v, command, pod);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (out.code !== 0) throw new Error(`${v.name}: ${command} ${pod} exited ${out.code}: ${(out.stdout + out.stderr).slice(0, 2000)}`);
  if (command === 'add' && !/"ips"/.test(out.stdout)) throw new Error(`${v.name}: add ${pod} gave no addresses: ${out.stdout.slice(0, 500)}`);
  return ms;
}

async function main(): Promise<void> {
  const plan = JSON.parse(readFileSync(0, 'utf8')) as DriverPlan;
  const results = plan.variants.map((v): DriverResult => ({ variant: v.name, addMs: [], delMs: [], addCpuMs: 0, delCpuMs: 0, bursts: [] }));
  const pod = plan.pods[0]!;
  // Latency: one ADD then one DEL at a time, the variants taking turns so that the machine's load
  // falls on all of them alike.
  for (let round = 0; round < plan.warmup + plan.rounds; round++) {
    for (const [k, v] of plan.variants.entries()) {
      const measured = round >= plan.warmup;
      const c0 = cpuNow(plan, v);
      const add = await timed(plan, v, 'add', pod);
      const c1 = cpuNow(plan, v);
      const del = await timed(plan, v, 'del', pod);
      const c2 = cpuNow(plan, v);
      if (!measured) continue;
      results[k]!.addMs.push(add);
      results[k]!.delMs.push(del);
      results[k]!.addCpuMs += (c1 - c0) / plan.rounds;
      results[k]!.delCpuMs += (c2 - c1) / plan.rounds;
    }
  }
  // Bursts: `size` ADDs at once (one pod each), then their DELs at once.
  for (let b = 0; b < plan.bursts; b++) {
    for (const size of plan.burstSizes) {
      for (const [k, v] of plan.variants.entries()) {
        const pods = plan.pods.slice(0, size);
        const c0 = cpuNow(plan, v);
        const t0 = process.hrtime.bigint();
        await Promise.all(pods.map((p) => timed(plan, v, 'add', p)));
        const t1 = process.hrtime.bigint();
        const c1 = cpuNow(plan, v);
        await Promise.all(pods.map((p) => timed(plan, v, 'del', p)));
        const t2 = process.hrtime.bigint();
        const c2 = cpuNow(plan, v);
        results[k]!.bursts.push({ size, addWallMs: Number(t1 - t0) / 1e6, addCpuMs: c1 - c0, delWallMs: Number(t2 - t1) / 1e6, delCpuMs: c2 - c1 });
        process.stderr.write(`${v.name}: ${size} at once: ADD ${(Number(t1 - t0) / 1e6).toFixed(0)} ms, CPU ${(c1 - c0).toFixed(0)} ms\n`);
      }
    }
  }
  process.stdout.write(JSON.stringify(results) + '\n');
}

await main();
