// A multi-node flannel cluster made of network namespaces on this machine:
//   hub ns:   bridge br0 198.18.0.254/24 and etcd on 198.18.0.254:2379
//   node i:   eth0 198.18.0.i/24 (veth into br0), ip_forward=1, flanneld, bridge cni0 for its pods
//   pods:     one ns each, eth0 (veth into the node's cni0) addressed from the node's subnet.
// With `ipv6`, node i also has 2001:2::i on eth0 and pods get an address from FLANNEL_IPV6_SUBNET too.
// With `offLinkNodes`, that many more nodes sit on a second L2 segment (bridge br1 in the hub, which
// routes between the two): node 100+k has 198.18.0.(200+k) and 2001:2::1:0:0:(200+k), and the first
// segment's nodes then use /25 and /80 prefixes, so neither segment is on link for the other.
// The test process stays in the root namespace. Everything started is recorded (PIDs, namespace
// names, temp dirs) so destroy() — or destroyFromState() from another process — removes it all.
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { ipBatch } from '../src/routes/ip.js';
import { parseEnvText } from '../src/subnet/envfile.js';
import { cniSocketPath, spawnFlanneldIn } from './flanneld.js';
import { Ip4Net, formatIp4 } from '../src/common/ip4.js';
import { Ip6Net, formatIp6 } from '../src/common/ip6.js';
import { startEtcd, type EtcdServer } from './etcd.js';
import { addNetns, delNetns, run, runId, sleep, waitFor } from './netns.js';

export { repoPath, repoRoot } from './repo.js';

export const HUB_IP = '198.18.0.254';
export const ETCD_ENDPOINT = `http://${HUB_IP}:2379`;

export interface ClusterOptions {
  /** Node i (1-based) has underlay IP 198.18.0.<i> on eth0. */
  nodes: number;
  /** Network config JSON, put at /coreos.com/network/config before daemons start. */
  config: Record<string, unknown>;
  /** Default true: all daemons spawned in the same tick, then wait for every env file. */
  startDaemons?: boolean;
  /** Extra flags for every daemon. */
  daemonArgs?: string[];
  /** Default 1 (pods need an env file, so none are made when startDaemons is false). */
  podsPerNode?: number;
  /** How long a daemon may take to write its env file; default 20 s. */
  daemonTimeoutMs?: number;
  /** Record what was started in <stateDir>/cluster.json (for destroyFromState from another process). */
  stateDir?: string;
  /** IPv6 underlay (2001:2::i/64 on node i) and dual-stack pods. */
  ipv6?: boolean;
  /** Nodes on a second L2 segment, not on link with the first (see the file comment). */
  offLinkNodes?: number;
}

export interface Pod {
  ns: string;
  ip: string;
  /** The pod's IPv6 address when the node's env file has FLANNEL_IPV6_SUBNET. */
  ip6: string | null;
  node: ClusterNode;
}

export interface ClusterNode {
  index: number;
  ns: string;
  ip: string;
  /** Underlay IPv6 address (with `ipv6`). */
  ip6: string | null;
  /** 1, or 2 for the off-link segment. */
  segment: 1 | 2;
  subnetFile: string;
  logFile: string;
  /** Where the node's daemon serves the CNI plugin. */
  cniSocket: string;
  /** Daemon PID while running. */
  pid: number | null;
  pods: Pod[];
  /** Parsed subnet env file. */
  env(): Promise<Record<string, string>>;
}

export interface Cluster {
  id: string;
  hubNs: string;
  etcdEndpoint: string;
  nodes: ClusterNode[];
  /** The directory holding every node's env file and log. */
  tmpDir: string;
  /** ETCDCTL_API=3 etcdctl against the cluster's etcd, run in the hub namespace; resolves with stdout. */
  etcdctl(args: string[]): Promise<string>;
  /** Returns when its env file has been (re)written. */
  startDaemon(node: ClusterNode, extraArgs?: string[]): Promise<void>;
  stopDaemon(node: ClusterNode, signal?: NodeJS.Signals): Promise<void>;
  /** Pod netns + veth into the node's bridge cni0, addressed from the env file. */
  addPod(node: ClusterNode): Promise<Pod>;
  /** Deletes a pod's namespace (and with it its veth) and forgets it. */
  removePod(pod: Pod): Promise<void>;
  ping(from: Pod, toIp: string, opts?: { count?: number; timeoutS?: number }): Promise<boolean>;
  /** Last lines of a node's daemon log. */
  logTail(node: ClusterNode, chars?: number): string;
  /** The daemon's log lines at level error or fatal (pino's JSON lines name the level). */
  errorsLogged(node: ClusterNode): string[];
  /**
   * Deletes the node's underlay interface (eth0, and with it its end in the hub and whatever the kernel
   * bound to it) and makes it again, with its MAC and addresses, as when a NIC's driver is reloaded.
   */
  replaceUnderlay(node: ClusterNode): Promise<void>;
  /** Kills every PID it started, deletes every namespace and temp dir. Safe to call twice. */
  destroy(): Promise<void>;
}

/** What destroyFromState needs to remove a cluster that another process left running. */
export interface ClusterState {
  pids: number[];
  namespaces: string[];
  dirs: string[];
}

function fileVersion(path: string): string | null {
  try {
    const st = statSync(path);
    return `${st.ino}:${st.mtimeMs}:${st.size}`;
  } catch {
    return null;
  }
}

/** True while a process with this PID exists. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Resident memory of a process in KiB (VmRSS). */
export function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]);
}

/** SIGTERM (or `signal`), then SIGKILL after `graceMs`; resolves once the process is gone. */
export async function killPid(pid: number, signal: NodeJS.Signals = 'SIGTERM', graceMs = 5000): Promise<void> {
  if (!alive(pid)) return;
  try {
    process.kill(pid, signal);
  } catch {
    return;
  }
  const deadline = Date.now() + graceMs;
  while (alive(pid) && Date.now() < deadline) await sleep(25);
  if (alive(pid)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    while (alive(pid)) await sleep(25);
  }
}

/** Removes a cluster recorded by a process that has since exited (scripts/demo.sh down). */
export async function destroyFromState(stateDir: string): Promise<void> {
  const file = join(stateDir, 'cluster.json');
  if (!existsSync(file)) return;
  const state = JSON.parse(readFileSync(file, 'utf8')) as ClusterState;
  await Promise.all(state.pids.map((pid) => killPid(pid, 'SIGTERM', 3000)));
  for (const ns of [...state.namespaces].reverse()) await delNetns(ns);
  for (const dir of state.dirs) rmSync(dir, { recursive: true, force: true });
  rmSync(file, { force: true });
}

export async function createCluster(opts: ClusterOptions): Promise<Cluster> {
  if (opts.nodes < 1 || opts.nodes > 250) throw new Error(`nodes must be 1..250, got ${opts.nodes}`);
  const id = runId();
  const prefix = `fl-${id}`;
  const hubNs = `${prefix}-hub`;
  const tmpDir = mkdtempSync(join(tmpdir(), `flannel-cluster-${id}-`));
  const namespaces: string[] = [];
  const children = new Map<ClusterNode, ChildProcess>();
  let etcd: EtcdServer | null = null;
  let destroyed = false;

  const saveState = (): void => {
    if (!opts.stateDir) return;
    mkdirSync(opts.stateDir, { recursive: true });
    const pids = [...children.values()].map((c) => c.pid).filter((p): p is number => p !== undefined);
    if (etcd) pids.push(etcd.pid);
    const state: ClusterState = { pids, namespaces, dirs: [tmpDir] };
    writeFileSync(join(opts.stateDir, 'cluster.json'), JSON.stringify(state, null, 2) + '\n');
  };
  const newNetns = async (name: string): Promise<void> => {
    namespaces.push(name); // recorded first, so a half-made namespace is still removed
    saveState();
    await addNetns(name);
  };

  const nodes: ClusterNode[] = [];
  const offLink = opts.offLinkNodes ?? 0;
  if (offLink > 50 || (offLink > 0 && opts.nodes > 120)) throw new Error('offLinkNodes must be at most 50, with at most 120 nodes');
  const indexes = [...Array.from({ length: opts.nodes }, (_, k) => k + 1), ...Array.from({ length: offLink }, (_, k) => 101 + k)];
  for (const i of indexes) {
    const dir = join(tmpDir, `node${i}`);
    mkdirSync(dir);
    const subnetFile = join(dir, 'subnet.env');
    const segment = i > 100 ? 2 : 1;
    nodes.push({
      index: i,
      ns: `${prefix}-n${i}`,
      ip: segment === 1 ? `198.18.0.${i}` : `198.18.0.${i + 99}`,
      ip6: opts.ipv6 ? (segment === 1 ? `2001:2::${i.toString(16)}` : `2001:2::1:0:0:${(i + 99).toString(16)}`) : null,
      segment,
      subnetFile,
      logFile: join(dir, 'flanneld.log'),
      cniSocket: cniSocketPath(join(dir, 'flanneld.log')),
      pid: null,
      pods: [],
      env: async () => parseEnvText(readFileSync(subnetFile, 'utf8')),
    });
  }

  const logTail = (node: ClusterNode, chars = 3000): string => {
    try {
      return readFileSync(node.logFile, 'utf8').slice(-chars);
    } catch {
      return '(no log)';
    }
  };

  const errorsLogged = (node: ClusterNode): string[] =>
    logTail(node, Number.MAX_SAFE_INTEGER).split('\n').filter((l) => /"level":"(error|fatal)"/.test(l));

  const etcdctl = async (args: string[]): Promise<string> => {
    const res = await run(['etcdctl', `--endpoints=${ETCD_ENDPOINT}`, ...args], { netns: hubNs, env: { ETCDCTL_API: '3' } });
    return res.stdout;
  };

  // Spawns without waiting, so that several daemons can start in the same tick.
  const spawnDaemon = (node: ClusterNode, extraArgs: string[]): void => {
    if (node.pid !== null) throw new Error(`node ${node.index}: daemon already running (pid ${node.pid})`);
    const args = [
      `--etcd-endpoints=${ETCD_ENDPOINT}`,
      '--iface=eth0',
      `--subnet-file=${node.subnetFile}`,
      '--log-level=debug',
      ...(opts.daemonArgs ?? []),
      ...extraArgs,
    ];
    const child = spawnFlanneldIn(node.ns, args, node.logFile);
    child.unref();
    node.pid = child.pid;
    children.set(node, child);
    child.once('exit', () => {
      if (children.get(node) === child) {
        children.delete(node);
        node.pid = null;
        saveState();
      }
    });
    saveState();
  };

  const waitEnvFile = async (node: ClusterNode, before: string | null): Promise<void> => {
    const timeoutMs = opts.daemonTimeoutMs ?? 20_000;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const now = fileVersion(node.subnetFile);
      if (now !== null && now !== before) {
        const env = parseEnvText(readFileSync(node.subnetFile, 'utf8'));
        if (env['FLANNEL_SUBNET']) return; // written completely
      }
      if (node.pid === null) throw new Error(`node ${node.index}: flanneld exited before writing ${node.subnetFile}; log tail:\n${logTail(node)}`);
      if (Date.now() > deadline) throw new Error(`node ${node.index}: no env file ${node.subnetFile} after ${timeoutMs} ms; log tail:\n${logTail(node)}`);
      await sleep(25);
    }
  };

  const startDaemon = async (node: ClusterNode, extraArgs: string[] = []): Promise<void> => {
    const before = fileVersion(node.subnetFile);
    spawnDaemon(node, extraArgs);
    await waitEnvFile(node, before);
  };

  const stopDaemon = async (node: ClusterNode, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> => {
    const child = children.get(node);
    if (!child || child.pid === undefined) return;
    await killPid(child.pid, signal);
    children.delete(node);
    node.pid = null;
    saveState();
  };

  // cni0 takes FLANNEL_SUBNET (the subnet's first address); recreated if the subnet changed.
  const ensureBridge = async (node: ClusterNode, env: Record<string, string>): Promise<void> => {
    const cidr = env['FLANNEL_SUBNET']!;
    const mtu = env['FLANNEL_MTU'] ?? '1500';
    const show = await run(['ip', '-n', node.ns, '-json', 'addr', 'show', 'dev', 'cni0'], { allowFail: true });
    if (show.code === 0) {
      const [link] = JSON.parse(show.stdout) as { addr_info: { family: string; local: string; prefixlen: number }[] }[];
      if (link?.addr_info.some((a) => a.family === 'inet' && `${a.local}/${a.prefixlen}` === cidr)) return;
      await ipBatch([['addr', 'flush', 'dev', 'cni0'], ['addr', 'add', cidr, 'dev', 'cni0']], { netns: node.ns });
      return;
    }
    await ipBatch([
      ['link', 'add', 'cni0', 'mtu', mtu, 'type', 'bridge'],
      ['addr', 'add', cidr, 'dev', 'cni0'],
      ...(env['FLANNEL_IPV6_SUBNET'] ? [['addr', 'add', env['FLANNEL_IPV6_SUBNET'], 'dev', 'cni0', 'nodad']] : []),
      ['link', 'set', 'cni0', 'up'],
    ], { netns: node.ns });
  };

  const addPod = async (node: ClusterNode): Promise<Pod> => {
    const env = await node.env();
    const cidr = env['FLANNEL_SUBNET'];
    if (!cidr) throw new Error(`node ${node.index}: no FLANNEL_SUBNET in ${node.subnetFile}`);
    const mtu = env['FLANNEL_MTU'] ?? '1500';
    await ensureBridge(node, env);
    const subnet = Ip4Net.parse(cidr, true);
    const gateway = cidr.split('/')[0]!;
    let j = 1; // the first free slot: names and addresses stay unique after removePod
    while (node.pods.some((p) => p.ns === `${node.ns}-p${j}`)) j++;
    const podIp = formatIp4(subnet.ip + 1 + j); // .1 is the bridge; pods get .2, .3, ...
    const cidr6 = env['FLANNEL_IPV6_SUBNET'] ?? null;
    const subnet6 = cidr6 ? Ip6Net.parse(cidr6, true) : null;
    const podIp6 = subnet6 ? formatIp6(subnet6.ip + 1n + BigInt(j)) : null; // ::1 is the bridge
    const pod: Pod = { ns: `${node.ns}-p${j}`, ip: podIp, ip6: podIp6, node };
    await newNetns(pod.ns);
    await ipBatch([
      ['link', 'add', `vp${j}`, 'mtu', mtu, 'type', 'veth', 'peer', 'name', 'eth0', 'mtu', mtu, 'netns', pod.ns],
      ['link', 'set', `vp${j}`, 'master', 'cni0', 'up'],
    ], { netns: node.ns });
    await ipBatch([
      ['addr', 'add', `${podIp}/${subnet.prefixLen}`, 'dev', 'eth0'],
      ...(podIp6 && subnet6 ? [['addr', 'add', `${podIp6}/${subnet6.prefixLen}`, 'dev', 'eth0', 'nodad']] : []),
      ['link', 'set', 'eth0', 'up'],
      ['route', 'add', 'default', 'via', gateway],
      ...(cidr6 ? [['route', 'add', '::/0', 'via', cidr6.split('/')[0]!]] : []),
    ], { netns: pod.ns });
    node.pods.push(pod);
    return pod;
  };

  const removePod = async (pod: Pod): Promise<void> => {
    await delNetns(pod.ns);
    const list = pod.node.pods;
    list.splice(list.indexOf(pod), 1);
  };

  const ping = async (from: Pod, toIp: string, o: { count?: number; timeoutS?: number } = {}): Promise<boolean> => {
    const count = o.count ?? 1;
    const timeoutS = o.timeoutS ?? 2;
    const res = await run(['ping', '-n', '-q', '-c', String(count), '-i', '0.2', '-W', String(timeoutS), toIp], {
      netns: from.ns,
      allowFail: true,
      timeoutMs: (count * 0.2 + timeoutS + 5) * 1000,
    });
    return res.code === 0;
  };

  const destroy = async (): Promise<void> => {
    if (destroyed) return;
    destroyed = true;
    const errors: unknown[] = [];
    const attempt = async (what: () => Promise<void>): Promise<void> => {
      try {
        await what();
      } catch (err) {
        errors.push(err);
      }
    };
    await Promise.all(nodes.map((node) => attempt(() => stopDaemon(node, 'SIGTERM'))));
    if (etcd) await attempt(() => etcd!.stop());
    for (const ns of [...namespaces].reverse()) await attempt(() => delNetns(ns));
    rmSync(tmpDir, { recursive: true, force: true });
    if (opts.stateDir) rmSync(join(opts.stateDir, 'cluster.json'), { force: true });
    if (errors.length > 0) throw new AggregateError(errors, `cluster ${id}: cleanup failed: ${errors.map(String).join('; ')}`);
  };

  /** eth0 of a node: a veth into the hub's bridge of its segment, with the node's addresses (and `mac`, when given). */
  async function connectUnderlay(node: ClusterNode, mac?: string): Promise<void> {
    await ipBatch([
      ['link', 'add', `v${node.index}`, 'type', 'veth', 'peer', 'name', 'eth0', ...(mac ? ['address', mac] : []), 'netns', node.ns],
      ['link', 'set', `v${node.index}`, 'master', node.segment === 1 ? 'br0' : 'br1', 'up'],
    ], { netns: hubNs });
    // Two segments: each node's prefixes cover its own segment only; the hub (etcd) stays on link.
    const [len4, len6] = offLink === 0 ? [24, 64] : node.segment === 1 ? [25, 80] : [26, 80];
    await ipBatch([
      ['addr', 'add', `${node.ip}/${len4}`, 'dev', 'eth0'],
      ...(node.ip6 ? [['addr', 'add', `${node.ip6}/${len6}`, 'dev', 'eth0', 'nodad']] : []),
      ['link', 'set', 'eth0', 'up'],
      ...(offLink > 0 ? [['route', 'add', `${HUB_IP}/32`, 'dev', 'eth0']] : []),
    ], { netns: node.ns });
  }

  async function replaceUnderlay(node: ClusterNode): Promise<void> {
    const mac = /link\/ether (\S+)/.exec((await run(['ip', '-n', node.ns, 'link', 'show', 'dev', 'eth0'])).stdout)?.[1];
    await run(['ip', '-n', node.ns, 'link', 'del', 'eth0']);
    await connectUnderlay(node, mac);
  }

  const cluster: Cluster = {
    id, hubNs, etcdEndpoint: ETCD_ENDPOINT, nodes, tmpDir,
    etcdctl, startDaemon, stopDaemon, addPod, removePod, ping, logTail, errorsLogged, replaceUnderlay, destroy,
  };

  try {
    await newNetns(hubNs);
    await ipBatch([
      ['link', 'add', 'br0', 'type', 'bridge'],
      ['addr', 'add', `${HUB_IP}/24`, 'dev', 'br0'],
      ['link', 'set', 'br0', 'up'],
      // The second segment: the hub answers for its own address there too and routes its upper half.
      ...(offLink > 0 ? [
        ['link', 'add', 'br1', 'type', 'bridge'],
        ['addr', 'add', `${HUB_IP}/32`, 'dev', 'br1'],
        ['link', 'set', 'br1', 'up'],
        ['route', 'add', '198.18.0.192/26', 'dev', 'br1'],
      ] : []),
    ], { netns: hubNs });
    etcd = await startEtcd({
      netns: hubNs, host: HUB_IP, clientPort: 2379, dataDir: mkdtempSync(join(tmpDir, 'etcd-')),
      ...(opts.stateDir ? { logFile: join(tmpDir, 'etcd.log') } : {}),
    });
    saveState();
    await etcdctl(['put', '/coreos.com/network/config', JSON.stringify(opts.config)]);
    for (const node of nodes) {
      await newNetns(node.ns);
      await connectUnderlay(node);
      await run(['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1'], { netns: node.ns });
      if (node.ip6) await run(['sysctl', '-q', '-w', 'net.ipv6.conf.all.forwarding=1'], { netns: node.ns });
    }
    if (opts.startDaemons ?? true) {
      const before = nodes.map((node) => fileVersion(node.subnetFile));
      for (const node of nodes) spawnDaemon(node, []); // same tick: they race for subnets
      await Promise.all(nodes.map((node, k) => waitEnvFile(node, before[k] ?? null)));
      for (const node of nodes) for (let j = 0; j < (opts.podsPerNode ?? 1); j++) await addPod(node);
    }
  } catch (err) {
    await destroy().catch(() => {});
    throw new Error(`cluster ${id} could not be created (and was removed): ${(err as Error).message}`, { cause: err });
  }
  return cluster;
}

/**
 * Pings from every node's first pod to every other node's first pod, retrying each pair for up to
 * `timeoutMs` while the leases converge. Returns the pairs that never got an answer.
 */
export async function unreachablePodPairs(
  cluster: Cluster,
  timeoutMs = 10_000,
  opts: { family?: 4 | 6; nodes?: ClusterNode[] } = {},
): Promise<string[]> {
  const pods = (opts.nodes ?? cluster.nodes).map((n) => n.pods[0]!);
  const failed: string[] = [];
  for (const from of pods) {
    for (const to of pods) {
      if (from === to) continue;
      const dst = opts.family === 6 ? to.ip6 : to.ip;
      if (dst === null) {
        failed.push(`pod on node ${to.node.index} has no IPv6 address`);
        continue;
      }
      const ok = await waitFor(() => cluster.ping(from, dst, { timeoutS: 1 }), timeoutMs, 0);
      if (!ok) failed.push(`pod on node ${from.node.index} -> pod on node ${to.node.index} (${dst})`);
    }
  }
  return failed;
}

/** A node's subnet, from its env file (FLANNEL_SUBNET is the bridge's address: host bits cleared). */
export async function subnetOf(node: ClusterNode): Promise<Ip4Net> {
  return Ip4Net.parse((await node.env())['FLANNEL_SUBNET']!, true);
}

/** A dual-stack node's two subnets, from its env file (FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET, host bits cleared). */
export async function dualSubnetsOf(node: ClusterNode): Promise<{ v4: Ip4Net; v6: Ip6Net }> {
  const env = await node.env();
  return { v4: Ip4Net.parse(env['FLANNEL_SUBNET']!, true), v6: Ip6Net.parse(env['FLANNEL_IPV6_SUBNET']!, true) };
}

/** The identity a node's daemon keeps beside its env file and writes into its lease (NodeIdentity). */
export function nodeIdentityOf(node: ClusterNode): string {
  return readFileSync(join(dirname(node.subnetFile), 'node-identity'), 'utf8').trim();
}
