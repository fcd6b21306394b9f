// A private /run/wireguard for a test node. wireguard-go puts its UAPI socket in /run/wireguard/ and
// wg(8) looks for it there; network namespaces do not separate that directory, so two test nodes with
// a device of the same name would share (and fight over) one socket. Each node gets a holder process
// inside its network namespace and a mount namespace of its own with a tmpfs on /run/wireguard;
// commands that need both (wg, wireguard-go) run under `enter`, an nsenter prefix into the holder.
// A cluster node's daemon has a /run/wireguard of its own already (testbed/flanneld.ts): daemonDevice()
// reads its devices there.
import { spawn } from 'node:child_process';
import type { WireguardImplementation } from '../../src/backend/wireguard/device.js';
import { IpCommandError, ip } from '../../src/routes/ip.js';
import { type WgDeviceState, WgClient } from '../../src/routes/wg.js';
import { type ClusterNode, killPid } from '../../testbed/cluster.js';
import { addNetns, delNetns, runId } from '../../testbed/netns.js';

export interface WireguardRoom {
  /** argv prefix: nsenter into the node's network namespace and its private mount namespace. */
  enter: string[];
  /** Ends the holder, and with it the mount namespace and its tmpfs. */
  close(): Promise<void>;
}

export async function wireguardRoom(netns: string): Promise<WireguardRoom> {
  const script = 'mkdir -p /run/wireguard && mount -t tmpfs -o mode=0755,size=1m tmpfs /run/wireguard && echo ready && exec sleep infinity';
  // ip netns exec, unshare and sh each exec the next: the child's PID is the holder's.
  const child = spawn('ip', ['netns', 'exec', netns, 'unshare', '--mount', '--propagation', 'private', 'sh', '-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
    child.once('exit', (code) => reject(new Error(`private /run/wireguard in ${netns}: exited ${code}: ${err}`)));
  });
  const pid = child.pid!;
  return {
    enter: ['nsenter', '-t', String(pid), '-m', '-n', '--'],
    close: () => killPid(pid, 'SIGKILL'),
  };
}

/**
 * What a cluster node's daemon's WireGuard device holds (`wg show <dev> dump`, in the daemon's network
 * namespace and its own /run/wireguard: testbed/flanneld.ts); null when there is no such device.
 */
export async function daemonDevice(node: ClusterNode, dev: string): Promise<WgDeviceState | null> {
  if (node.pid === null) throw new Error(`node ${node.index}: no daemon running`);
  return new WgClient({ enter: ['nsenter', '-t', String(node.pid), '-m', '-n', '--'] }).showIfPresent(dev);
}

/** A device's peers as one line each, without what changes with traffic (handshake times, byte counts). */
export function peerLines(state: WgDeviceState | null): string[] {
  return (state?.peers ?? [])
    .map((p) => `${p.publicKey} psk=${p.presharedKeyId ?? '-'} endpoint=${p.endpoint ?? '-'} allowed=${p.allowedIPs.join(',')} keepalive=${p.persistentKeepalive}`)
    .sort();
}

/** What `ip link add type wireguard` does on this machine's kernel, probed in a scratch namespace. */
export async function probeKernelWireguard(): Promise<WireguardImplementation> {
  const ns = `wgprobe-${runId()}`;
  await addNetns(ns);
  try {
    await ip(['link', 'add', 'dev', 'wgprobe0', 'type', 'wireguard'], { netns: ns });
    return 'kernel';
  } catch (err) {
    if (err instanceof IpCommandError && /Unknown device type|not supported/i.test(err.stderr)) return 'wireguard-go';
    throw err;
  } finally {
    await delNetns(ns);
  }
}
