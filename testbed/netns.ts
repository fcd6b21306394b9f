// Network-namespace helpers for tests, benches and the demo: run a command (optionally inside a
// namespace), create and delete namespaces. Commands are argv arrays; nothing goes through a shell.
import { runProcess } from '../src/common/child-process.js';
import { randomBytes } from 'node:crypto';

/** A short random id, so that names made by concurrent runs on this machine never clash. */
export function runId(): string {
  return randomBytes(3).toString('hex');
}

export interface RunOptions {
  netns?: string;
  input?: string;
  /** Resolve with the exit code instead of rejecting when the command fails. */
  allowFail?: boolean;
  timeoutMs?: number;
  env?: Record<string, string>;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number;
}

export class RunError extends Error {
  constructor(
    readonly argv: readonly string[],
    readonly result: RunResult,
  ) {
    super(`${argv.join(' ')} exited ${result.code}: ${(result.stderr || result.stdout).trim().slice(-2000)}`);
    this.name = 'RunError';
  }
}

/** Runs argv (inside `netns` via `ip netns exec` when given) and collects its output. */
export async function run(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const r = await runProcess(argv, { ...opts, timeoutMs });
  const result = { stdout: r.stdout, stderr: r.timedOut ? `${r.stderr}\n(killed after ${timeoutMs} ms)` : r.stderr, code: r.code };
  if (result.code !== 0 && !opts.allowFail) throw new RunError(r.argv, result);
  return result;
}

/** Creates a namespace and brings its loopback up. */
export async function addNetns(name: string): Promise<void> {
  await run(['ip', 'netns', 'add', name]);
  await run(['ip', '-n', name, 'link', 'set', 'lo', 'up']);
}

/**
 * A namespace that stands for one node on its own, for tests that need no underlay bridge: lo up and
 * eth0 at 198.18.0.1/24, one end of a veth pair whose other end (eth0peer) stays in the namespace.
 */
export async function addLoneNodeNetns(name: string): Promise<void> {
  await addNetns(name);
  await run(['ip', '-n', name, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0peer']);
  await run(['ip', '-n', name, 'addr', 'add', '198.18.0.1/24', 'dev', 'eth0']);
  await run(['ip', '-n', name, 'link', 'set', 'eth0', 'up']);
  await run(['ip', '-n', name, 'link', 'set', 'eth0peer', 'up']);
}

/** PIDs of the processes running inside a namespace. */
export async function netnsPids(name: string): Promise<number[]> {
  const res = await run(['ip', 'netns', 'pids', name], { allowFail: true });
  if (res.code !== 0) return [];
  return res.stdout.split(/\s+/).filter(Boolean).map(Number).filter((pid) => pid > 1 && pid !== process.pid);
}

export async function netnsExists(name: string): Promise<boolean> {
  const res = await run(['ip', 'netns', 'list']);
  return res.stdout.split('\n').some((line) => line.split(' ')[0] === name);
}

/** Kills every process still inside the namespace, then deletes it. A missing namespace is fine. */
export async function delNetns(name: string): Promise<void> {
  if (!(await netnsExists(name))) return;
  for (const pid of await netnsPids(name)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
  await run(['ip', 'netns', 'del', name], { allowFail: true });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` until it returns true or `timeoutMs` passes; returns the last result. */
export async function waitFor(check: () => Promise<boolean> | boolean, timeoutMs: number, intervalMs = 100): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() >= deadline) return false;
    await sleep(intervalMs);
  }
}

/**
 * A host on the underlay (the hub's bridge br0) that runs no flanneld: `<hub prefix>-out` with eth0 at `ip`/24.
 * Tests use it as a fake node or an intruder. Returns the namespace; delete it with delNetns.
 */
export async function addUnderlayHost(hubNs: string, ip: string): Promise<string> {
  const ns = `${hubNs.replace(/-hub$/, '')}-out`;
  await addNetns(ns);
  await run(['ip', '-n', hubNs, 'link', 'add', 'vout', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
  await run(['ip', '-n', hubNs, 'link', 'set', 'vout', 'master', 'br0', 'up']);
  await run(['ip', '-n', ns, 'addr', 'add', `${ip}/24`, 'dev', 'eth0']);
  await run(['ip', '-n', ns, 'link', 'set', 'eth0', 'up']);
  return ns;
}
