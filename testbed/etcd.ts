// Starts a real etcd server (Debian's etcd-server) on loopback or inside a network namespace, with a
// throw-away data dir, and stops it by PID. Ports are chosen per instance so test files can run
// while another testbed is up.
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run, sleep } from './netns.js';

export interface EtcdServer {
  /** Client URL, e.g. http://127.0.0.1:23791 */
  endpoint: string;
  pid: number;
  dataDir: string;
  /** Stops the server (SIGTERM, then SIGKILL) and removes its data dir unless `keepData`. */
  stop(opts?: { keepData?: boolean }): Promise<void>;
}

export interface EtcdOptions {
  /** Listen address; default 127.0.0.1. */
  host?: string;
  /** Run inside this network namespace (via `ip netns exec`). */
  netns?: string;
  /** Client port; default a free loopback port. */
  clientPort?: number;
  peerPort?: number;
  /** Reuse a data dir (to restart a stopped server with its data). */
  dataDir?: string;
  /** Extra etcd flags. */
  extraArgs?: string[];
  name?: string;
  /** Append etcd's log to this file instead of keeping its tail in memory; the server then
   *  outlives this process safely (no pipe to break), as the demo needs. */
  logFile?: string;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Waits until `etcdctl endpoint health` passes for every endpoint (run inside `netns` when given),
 * failing at once when `died()` names a reason (the server exited), and after `timeoutMs`.
 */
export async function waitEtcdHealthy(opts: {
  endpoints: string[];
  netns?: string;
  /** Extra etcdctl flags (TLS). */
  flags?: string[];
  died: () => string | null;
  log: () => string;
  timeoutMs: number;
}): Promise<void> {
  const deadline = Date.now() + opts.timeoutMs;
  for (;;) {
    const dead = opts.died();
    if (dead) throw new Error(`${dead}: ${opts.log()}`);
    const res = await run(['etcdctl', `--endpoints=${opts.endpoints.join(',')}`, ...(opts.flags ?? []), '--command-timeout=1s', 'endpoint', 'health'], {
      ...(opts.netns ? { netns: opts.netns } : {}), env: { ETCDCTL_API: '3' }, allowFail: true, timeoutMs: 10_000,
    });
    if (res.code === 0) return;
    if (Date.now() > deadline) throw new Error(`etcd ${opts.endpoints.join(',')} not healthy after ${opts.timeoutMs} ms: ${res.stderr.slice(-500)}; ${opts.log()}`);
    await sleep(100);
  }
}

export async function startEtcd(opts: EtcdOptions = {}): Promise<EtcdServer> {
  const host = opts.host ?? '127.0.0.1';
  const clientPort = opts.clientPort ?? (await freePort());
  const peerPort = opts.peerPort ?? (await freePort());
  const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'flannel-etcd-'));
  const name = opts.name ?? 'default';
  const endpoint = `http://${host}:${clientPort}`;
  const peerUrl = `http://${host}:${peerPort}`;
  const args = [
    '--name', name,
    '--data-dir', dataDir,
    '--listen-client-urls', endpoint,
    '--advertise-client-urls', endpoint,
    '--listen-peer-urls', peerUrl,
    '--initial-advertise-peer-urls', peerUrl,
    '--initial-cluster', `${name}=${peerUrl}`,
    ...(opts.extraArgs ?? []),
  ];
  const logFd = opts.logFile ? openSync(opts.logFile, 'a') : null;
  const stdio = ['ignore', 'ignore', logFd ?? 'pipe'] as const;
  const child = opts.netns ? spawn('ip', ['netns', 'exec', opts.netns, 'etcd', ...args], { stdio: [...stdio] }) : spawn('etcd', args, { stdio: [...stdio] });
  if (logFd !== null) {
    closeSync(logFd);
    child.unref(); // with its log in a file it may outlive us (the demo leaves it running)
  }
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const logTail = (): string => (opts.logFile ? readFileSync(opts.logFile, 'utf8').slice(-4000) : stderr);
  const pid = child.pid;
  if (pid === undefined) throw new Error('could not start etcd (is etcd-server installed?)');
  try {
    await waitEtcdHealthy({
      endpoints: [endpoint],
      ...(opts.netns ? { netns: opts.netns } : {}),
      died: () => (child.exitCode !== null ? `etcd exited with ${child.exitCode}` : null),
      log: logTail,
      timeoutMs: 20_000,
    });
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  return {
    endpoint,
    pid,
    dataDir,
    async stop({ keepData = false } = {}) {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise<void>((r) => child.once('exit', () => r()));
        process.kill(pid, 'SIGTERM');
        const timer = setTimeout(() => {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            /* already gone */
          }
        }, 5000);
        await exited;
        clearTimeout(timer);
      }
      if (!keepData) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
