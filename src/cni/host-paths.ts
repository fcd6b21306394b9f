// The host paths a CNI request makes the plugin and its delegate touch. A process that serves the
// request for someone else (flanneld, src/daemon/cni-server.ts) checks that it sees each of them as
// the same file as the caller does before it serves from another mount namespace (a container).
import { dirname } from 'node:path';
import { parseFlannelNetConf } from './netconf.js';

/** host-local's default store, where it keeps one file per address. */
export const HOST_LOCAL_DATA_DIR = '/var/lib/cni/networks';

export interface HostPaths {
  /** Files and directories read or entered: the same file on both sides, or absent on both. */
  read: string[];
  /** Directories written, created when missing: the deepest one that exists must be the same. */
  written: string[];
  /** The IPAM type when it is not host-local: it keeps its state where we cannot name it. */
  otherIpam: string | null;
}

/**
 * The paths of a request. A request whose environment or conf the plugin refuses touches nothing
 * (the plugin answers with the error), so it names none.
 */
export function hostPaths(env: Readonly<Record<string, string | undefined>>, stdin: string): HostPaths {
  const none: HostPaths = { read: [], written: [], otherIpam: null };
  const command = env['CNI_COMMAND'];
  if (command !== 'ADD' && command !== 'DEL' && command !== 'CHECK') return none;
  let conf;
  try {
    conf = parseFlannelNetConf(stdin);
  } catch {
    return none;
  }
  const read = [...(env['CNI_NETNS'] ? [env['CNI_NETNS']] : []), ...(env['CNI_PATH'] ?? '').split(':').filter((d) => d !== ''), conf.subnetFile];
  const ipamType = conf.ipam?.['type'] ?? 'host-local';
  if (ipamType !== 'host-local') return { read, written: [conf.dataDir], otherIpam: String(ipamType) };
  const ipamDir = typeof conf.ipam?.['dataDir'] === 'string' && conf.ipam['dataDir'] !== '' ? conf.ipam['dataDir'] : HOST_LOCAL_DATA_DIR;
  return { read, written: [conf.dataDir, ipamDir], otherIpam: null };
}

/** `path` and its ancestors, deepest first, down to the first one `exists` says is there. */
export function pathsToFirstExisting(path: string, exists: (p: string) => boolean): string[] {
  const chain = [path];
  let at = path;
  while (!exists(at)) {
    const up = dirname(at);
    if (up === at) break;
    chain.push(up);
    at = up;
  }
  return chain;
}
