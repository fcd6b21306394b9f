// Starts bin/flanneld inside a network namespace, its output appended to a log file: the one place the
// testbed spawns the daemon (cluster nodes, and daemons pointed at other etcd topologies).
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from './repo.js';

export function flanneldPath(): string {
  return join(repoRoot(), 'bin', 'flanneld');
}

/**
 * Where a daemon logging to `logFile` serves the CNI plugin: beside its log, never the host's
 * /run/flannel/cni.sock, so that daemons of tests and benches never meet.
 */
export function cniSocketPath(logFile: string): string {
  return `${logFile.replace(/\.log$/, '')}.cni.sock`;
}

/**
 * Spawns without waiting for anything, so several daemons can start in the same tick. The daemon
 * serves the CNI plugin at cniSocketPath(logFile) unless `args` name another --cni-socket.
 */
export function spawnFlanneldIn(ns: string, args: readonly string[], logFile: string): ChildProcess & { pid: number } {
  const flanneld = flanneldPath();
  if (!existsSync(flanneld)) throw new Error(`${flanneld} does not exist (npm run build, and is bin/flanneld there?)`);
  const fd = openSync(logFile, 'a');
  const child = spawn('ip', ['netns', 'exec', ns, flanneld, `--cni-socket=${cniSocketPath(logFile)}`, ...args], { stdio: ['ignore', fd, fd] });
  closeSync(fd);
  if (child.pid === undefined) throw new Error(`cannot spawn ${flanneld} in ${ns}`);
  return child as ChildProcess & { pid: number };
}
