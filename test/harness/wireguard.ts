// A private /run/wireguard for a test node. wireguard-go puts its UAPI socket in /run/wireguard/ and
// wg(8) looks for it there; network namespaces do not separate that directory, so two test nodes with
// a device of the same name would share (and fight over) one socket. Each node gets a holder process
// inside its network namespace and a mount namespace of its own with a tmpfs on /run/wireguard;
// commands that need both (wg, wireguard-go) run under `enter`, an nsenter prefix into the holder.
import { spawn } from 'node:child_process';
import { killPid } from '../../testbed/cluster.js';

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
