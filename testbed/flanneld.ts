// Starts bin/flanneld inside a network namespace, its output appended to a log file: the one place the
// testbed spawns the daemon (cluster nodes, and daemons pointed at other etcd topologies). Each daemon
// is a node of its own: its WireGuard key file is beside its log, and it has a /run/wireguard of its own
// (wireguard-go's UAPI sockets live there, and network namespaces do not separate it): a tmpfs mounted
// in the mount namespace `ip netns exec` makes for it, which no mount leaves.
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

/** Where a daemon logging to `logFile` keeps its WireGuard key: beside its log, never the host's /run/flannel/wgkey. */
export function wireguardKeyPath(logFile: string): string {
  return `${logFile.replace(/\.log$/, '')}.wgkey`;
}

/**
 * Spawns without waiting for anything, so several daemons can start in the same tick. The daemon
 * serves the CNI plugin at cniSocketPath(logFile) unless `args` name another --cni-socket.
 */
export function spawnFlanneldIn(ns: string, args: readonly string[], logFile: string): ChildProcess & { pid: number } {
  const flanneld = flanneldPath();
  if (!existsSync(flanneld)) throw new Error(`${flanneld} does not exist (npm run build, and is bin/flanneld there?)`);
  const fd = openSync(logFile, 'a');
  // sh execs the daemon: the child's PID is the daemon's (and `nsenter -t PID -m -n` reaches its /run/wireguard).
  const privateRun = 'mkdir -p /run/wireguard && mount -t tmpfs -o mode=0755,size=1m tmpfs /run/wireguard && exec "$0" "$@"';
  const child = spawn('ip', ['netns', 'exec', ns, 'sh', '-c', privateRun, flanneld, `--cni-socket=${cniSocketPath(logFile)}`, ...args], {
    stdio: ['ignore', fd, fd],
    env: { ...process.env, WIREGUARD_KEY_FILE: wireguardKeyPath(logFile) },
  });
  closeSync(fd);
  if (child.pid === undefined) throw new Error(`cannot spawn ${flanneld} in ${ns}`);
  return child as ChildProcess & { pid: number };
}
