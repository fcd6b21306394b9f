// Running the flannel CNI plugin the way a container runtime runs it: an executable with CNI_*
// variables and the network config on stdin, inside the node's network namespace. Two ways, so that
// every CNI test checks both paths:
//   daemon      the compiled client, copied alone into a directory of its own: flanneld must serve
//               each call, as there is no standalone plugin next to the copy to fall back to;
//   standalone  bin/flannel with the client's socket pointing at nothing, so that the client (where
//               it is compiled) runs the standalone plugin: the path of a node whose flanneld is down.
import { chmodSync, copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../../testbed/netns.js';
import { repoPath } from '../../testbed/repo.js';

export type CniPath = 'daemon' | 'standalone';
export const CNI_PATHS: readonly CniPath[] = ['daemon', 'standalone'];

export const CNI_CLIENT = repoPath('build', 'Release', 'flannel_cni');
/** The standalone plugin is built (dist/), and for the daemon path, the client too. */
export function cniBuilt(path: CniPath): boolean {
  return existsSync(repoPath('dist', 'flannel-cni.mjs')) && (path === 'standalone' || existsSync(CNI_CLIENT));
}

/**
 * A copy of the client with no tree around it (made once per `dir`): if flanneld does not serve,
 * the call fails, naming why flanneld did not and that there is no standalone plugin.
 */
export function daemonOnlyClient(dir: string): string {
  const copy = join(dir, 'daemon-only', 'build', 'Release', 'flannel_cni');
  if (existsSync(copy)) return copy;
  mkdirSync(join(dir, 'daemon-only', 'build', 'Release'), { recursive: true });
  copyFileSync(CNI_CLIENT, copy);
  chmodSync(copy, 0o755);
  return copy;
}

export interface CniPlugin {
  /** The executable the runtime runs. */
  path: string;
  /** Added to the CNI_* variables: the client's socket. */
  env: Record<string, string>;
}

/** The plugin for `path`: `socket` is the serving flanneld's; `dir` a directory of the test's. */
export function cniPlugin(path: CniPath, socket: string, dir: string): CniPlugin {
  if (path === 'daemon') return { path: daemonOnlyClient(dir), env: { FLANNEL_CNI_SOCKET: socket } };
  return { path: repoPath('bin', 'flannel'), env: { FLANNEL_CNI_SOCKET: join(dir, 'no-flanneld-here.sock') } };
}

export interface CniCall {
  command: 'ADD' | 'DEL' | 'CHECK' | 'VERSION';
  conf: Record<string, unknown> | string;
  containerId?: string;
  netns?: string; // the pod's namespace name
  ifname?: string;
  /** The node namespace the plugin runs in (where the runtime would run it). */
  nodeNs?: string;
  env?: Record<string, string>;
  cniPath?: string;
  /** Arguments of the executable (when it is a wrapper, e.g. unshare, running the plugin). */
  args?: string[];
}

export interface CniReply {
  code: number;
  json: Record<string, unknown> | null;
  stdout: string;
  stderr: string;
}

/** One call of `plugin`, as a runtime makes it. */
export async function callCni(plugin: CniPlugin, call: CniCall): Promise<CniReply> {
  const env: Record<string, string> = { CNI_COMMAND: call.command, CNI_PATH: call.cniPath ?? '/usr/lib/cni', ...plugin.env, ...(call.env ?? {}) };
  if (call.containerId) env['CNI_CONTAINERID'] = call.containerId;
  if (call.netns) env['CNI_NETNS'] = `/var/run/netns/${call.netns}`;
  if (call.command !== 'VERSION') env['CNI_IFNAME'] = call.ifname ?? 'eth0';
  const input = typeof call.conf === 'string' ? call.conf : JSON.stringify(call.conf);
  const res = await run([plugin.path, ...(call.args ?? [])], { netns: call.nodeNs, input, env, allowFail: true, timeoutMs: 60_000 });
  let json: Record<string, unknown> | null = null;
  try {
    json = res.stdout.trim() ? (JSON.parse(res.stdout) as Record<string, unknown>) : null;
  } catch {
    json = null;
  }
  return { code: res.code, json, stdout: res.stdout, stderr: res.stderr };
}
