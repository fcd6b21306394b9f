// etcd topologies for resilience tests, all inside a network namespace (the cluster's hub):
//  - a multi-member etcd cluster (one member per IP, e.g. 198.18.0.251-253),
//  - an etcd serving TLS with client-certificate auth,
//  - control over the cluster harness's own etcd (kill it by PID, start it again on the same data),
// plus flanneld processes started with flags the cluster harness does not pass (other endpoints, TLS).
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Cluster, ClusterNode } from '../../testbed/cluster.js';
import { killPid } from '../../testbed/cluster.js';
import { waitEtcdHealthy } from '../../testbed/etcd.js';
import { spawnFlanneldIn } from '../../testbed/flanneld.js';
import { netnsPids, run } from '../../testbed/netns.js';

export interface TlsClientFiles {
  ca: string;
  cert: string;
  key: string;
}

/** etcdctl flags for `endpoints`, with TLS client files when given. */
export function etcdctlFlags(endpoints: string[], tls?: TlsClientFiles): string[] {
  return [
    `--endpoints=${endpoints.join(',')}`,
    ...(tls ? [`--cacert=${tls.ca}`, `--cert=${tls.cert}`, `--key=${tls.key}`] : []),
  ];
}

/** ETCDCTL_API=3 etcdctl inside `netns`; resolves with stdout. */
export async function etcdctlIn(netns: string, endpoints: string[], args: string[], tls?: TlsClientFiles): Promise<string> {
  const res = await run(['etcdctl', ...etcdctlFlags(endpoints, tls), '--command-timeout=5s', ...args], { netns, env: { ETCDCTL_API: '3' } });
  return res.stdout;
}

export interface EtcdProcess {
  name: string;
  endpoint: string;
  pid: number;
  dataDir: string;
  logFile: string;
  alive(): boolean;
  /** Sends `signal` and waits until the process is gone (SIGKILL after 5 s). */
  kill(signal?: NodeJS.Signals): Promise<void>;
}

interface SpawnEtcdOptions {
  netns: string;
  name: string;
  argv: string[];
  dataDir: string;
  logFile: string;
}

function spawnEtcdProcess(o: SpawnEtcdOptions, endpoint: string): EtcdProcess {
  const fd = openSync(o.logFile, 'a');
  const child: ChildProcess = spawn('ip', ['netns', 'exec', o.netns, 'etcd', ...o.argv], { stdio: ['ignore', 'ignore', fd] });
  closeSync(fd);
  const pid = child.pid;
  if (pid === undefined) throw new Error(`cannot start etcd ${o.name}`);
  let exited = false;
  child.once('exit', () => (exited = true));
  return {
    name: o.name,
    endpoint,
    pid,
    dataDir: o.dataDir,
    logFile: o.logFile,
    alive: () => !exited,
    kill: async (signal: NodeJS.Signals = 'SIGTERM') => {
      if (exited) return;
      const gone = new Promise<void>((r) => child.once('exit', () => r()));
      await killPid(pid, signal);
      await gone;
    },
  };
}

/** Waits until every endpoint is healthy, failing at once when one of the processes exited. */
function waitMembersHealthy(netns: string, endpoints: string[], proc: EtcdProcess[], tls: TlsClientFiles | undefined, timeoutMs: number): Promise<void> {
  return waitEtcdHealthy({
    endpoints,
    netns,
    flags: etcdctlFlags([], tls).filter((f) => !f.startsWith('--endpoints')),
    died: () => {
      const dead = proc.find((p) => !p.alive());
      return dead ? `etcd ${dead.name} exited` : null;
    },
    log: () => tail(proc[0]!.logFile),
    timeoutMs,
  });
}

function tail(file: string, chars = 1500): string {
  try {
    return readFileSync(file, 'utf8').slice(-chars);
  } catch {
    return '(no log)';
  }
}

export interface EtcdMembers {
  members: EtcdProcess[];
  endpoints: string[];
  etcdctl(args: string[]): Promise<string>;
  /** Stops every member still running (SIGTERM) and removes the data dirs. */
  stop(): Promise<void>;
}

/**
 * A multi-member etcd cluster inside `netns`, one member per IP (each IP must already be assigned
 * to an interface there), client port 2379 and peer port 2380 on each.
 */
export async function startEtcdMembers(netns: string, ips: string[]): Promise<EtcdMembers> {
  const dir = mkdtempSync(join(tmpdir(), 'flannel-etcd-members-'));
  const token = `flannel-test-${netns}`;
  const names = ips.map((_, i) => `m${i + 1}`);
  const initialCluster = ips.map((ip, i) => `${names[i]}=http://${ip}:2380`).join(',');
  const members = ips.map((ip, i) => {
    const name = names[i]!;
    const dataDir = join(dir, name);
    const endpoint = `http://${ip}:2379`;
    return spawnEtcdProcess({
      netns, name, dataDir, logFile: join(dir, `${name}.log`),
      argv: [
        '--name', name, '--data-dir', dataDir,
        '--listen-client-urls', endpoint, '--advertise-client-urls', endpoint,
        '--listen-peer-urls', `http://${ip}:2380`, '--initial-advertise-peer-urls', `http://${ip}:2380`,
        '--initial-cluster', initialCluster, '--initial-cluster-state', 'new', '--initial-cluster-token', token,
      ],
    }, endpoint);
  });
  const endpoints = members.map((m) => m.endpoint);
  const stop = async (): Promise<void> => {
    await Promise.all(members.map((m) => m.kill('SIGTERM')));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitMembersHealthy(netns, endpoints, members, undefined, 30_000);
  } catch (err) {
    await stop();
    throw err;
  }
  return { members, endpoints, etcdctl: (args) => etcdctlIn(netns, endpoints, args), stop };
}

export interface TlsEtcd {
  process: EtcdProcess;
  endpoint: string;
  etcdctl(args: string[]): Promise<string>;
  stop(): Promise<void>;
}

/** One etcd on https://<ip>:2379 that demands a client certificate signed by `ca`. */
export async function startTlsEtcd(netns: string, ip: string, files: { ca: string; serverCert: string; serverKey: string }, client: TlsClientFiles): Promise<TlsEtcd> {
  const dir = mkdtempSync(join(tmpdir(), 'flannel-etcd-tls-'));
  const endpoint = `https://${ip}:2379`;
  const proc = spawnEtcdProcess({
    netns, name: 'tls', dataDir: join(dir, 'data'), logFile: join(dir, 'etcd.log'),
    argv: [
      '--name', 'tls', '--data-dir', join(dir, 'data'),
      '--listen-client-urls', endpoint, '--advertise-client-urls', endpoint,
      '--listen-peer-urls', `http://${ip}:2380`, '--initial-advertise-peer-urls', `http://${ip}:2380`,
      '--initial-cluster', `tls=http://${ip}:2380`,
      '--cert-file', files.serverCert, '--key-file', files.serverKey,
      '--trusted-ca-file', files.ca, '--client-cert-auth',
    ],
  }, endpoint);
  const stop = async (): Promise<void> => {
    await proc.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitMembersHealthy(netns, [endpoint], [proc], client, 20_000);
  } catch (err) {
    await stop();
    throw err;
  }
  return { process: proc, endpoint, etcdctl: (args) => etcdctlIn(netns, [endpoint], args, client), stop };
}

/**
 * The cluster harness's etcd (in the hub namespace), to stop and start again: found by PID among
 * the hub's processes, restarted with the same command line and data dir.
 */
export interface HubEtcd {
  pid: number;
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Starts it again (same argv, same data) and waits until it serves requests. */
  restart(): Promise<void>;
  /** Stops a restarted instance (the harness stops only the one it started). */
  stopRestarted(): Promise<void>;
}

export async function hubEtcd(cluster: Cluster): Promise<HubEtcd> {
  const pids = await netnsPids(cluster.hubNs);
  const pid = pids.find((p) => {
    try {
      return readlinkSync(`/proc/${p}/exe`).endsWith('/etcd');
    } catch {
      return false;
    }
  });
  if (pid === undefined) throw new Error(`no etcd process in ${cluster.hubNs}`);
  const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((a) => a !== '').slice(1);
  const dataDir = argv[argv.indexOf('--data-dir') + 1] ?? '';
  let current: EtcdProcess | null = null;
  const handle: HubEtcd = {
    pid,
    kill: async (signal: NodeJS.Signals = 'SIGKILL') => {
      if (current) await current.kill(signal);
      else await killPid(handle.pid, signal, 5000);
    },
    restart: async () => {
      if (current?.alive()) throw new Error('hub etcd is already running');
      current = spawnEtcdProcess({ netns: cluster.hubNs, name: 'hub', argv, dataDir, logFile: join(cluster.tmpDir, 'etcd-restarted.log') }, cluster.etcdEndpoint);
      handle.pid = current.pid;
      await waitMembersHealthy(cluster.hubNs, [cluster.etcdEndpoint], [current], undefined, 20_000);
    },
    stopRestarted: async () => {
      await current?.kill('SIGTERM');
    },
  };
  return handle;
}

export interface FlanneldProcess {
  pid: number;
  logFile: string;
  exited(): boolean;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * flanneld in a cluster node's namespace with exactly the flags given (the harness always adds
 * its own --etcd-endpoints; this is for other etcd topologies). Writes to the node's subnet file
 * and log; does not wait for the env file.
 */
export function spawnFlanneld(node: ClusterNode, args: string[], logFile = node.logFile): FlanneldProcess {
  const child = spawnFlanneldIn(node.ns, ['--iface=eth0', `--subnet-file=${node.subnetFile}`, '--log-level=debug', ...args], logFile);
  const pid = child.pid;
  let exited = false;
  child.once('exit', () => (exited = true));
  return {
    pid,
    logFile,
    exited: () => exited,
    stop: async (signal: NodeJS.Signals = 'SIGTERM') => {
      if (exited) return;
      await killPid(pid, signal);
    },
  };
}
