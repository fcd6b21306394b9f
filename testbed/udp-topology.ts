// The testbed cluster's topology without etcd or daemons, for the udp data-path tests and the
// throughput bench: a hub namespace with bridge br0 (198.18.0.254/24), node namespaces with eth0
// 198.18.0.<i>/24 and a bridge cni0 holding the node's subnet, and one pod namespace per node.
// The overlay device (flannel0 from our forwarder, or a hand-made VXLAN) is added by the caller.
import { ipBatch } from '../src/routes/ip.js';
import { Ip4Net, formatIp4 } from '../src/common/ip4.js';
import { addNetns, delNetns, run, runId } from './netns.js';

export const OVERLAY = Ip4Net.parse('198.19.0.0/16');

export interface TopoPod {
  ns: string;
  ip: string;
}

export interface TopoNode {
  index: number;
  ns: string;
  /** Underlay address on eth0. */
  ip: string;
  /** This node's overlay subnet (198.19.<10+i>.0/24); cni0 has its .1, the pod its .2. */
  subnet: Ip4Net;
  pod: TopoPod;
}

export interface Topology {
  id: string;
  hubNs: string;
  nodes: TopoNode[];
  /** Deletes every namespace made (processes inside are killed first). */
  destroy(): Promise<void>;
}

export interface TopologyOptions {
  nodes: number;
  /** MTU of cni0 and the pods' eth0 (the overlay MTU). */
  podMtu: number;
  /** Namespace name prefix; a random id is appended. */
  prefix?: string;
}

export async function createTopology(opts: TopologyOptions): Promise<Topology> {
  const id = runId();
  const prefix = `${opts.prefix ?? 'udpt'}-${id}`;
  const hubNs = `${prefix}-hub`;
  const made: string[] = [];
  const nodes: TopoNode[] = [];
  const destroy = async (): Promise<void> => {
    for (const ns of [...made].reverse()) await delNetns(ns);
    made.length = 0;
  };
  const netns = async (name: string): Promise<void> => {
    made.push(name);
    await addNetns(name);
  };
  try {
    await netns(hubNs);
    await ipBatch([['link', 'add', 'br0', 'type', 'bridge'], ['addr', 'add', '198.18.0.254/24', 'dev', 'br0'], ['link', 'set', 'br0', 'up']], {
      netns: hubNs,
    });
    for (let i = 1; i <= opts.nodes; i++) {
      const ns = `${prefix}-n${i}`;
      const subnet = new Ip4Net(OVERLAY.ip + (10 + i) * 256, 24);
      const pod: TopoPod = { ns: `${prefix}-p${i}`, ip: formatIp4(subnet.ip + 2) };
      await netns(ns);
      await netns(pod.ns);
      await ipBatch([['link', 'add', `v${i}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns], ['link', 'set', `v${i}`, 'master', 'br0', 'up']], {
        netns: hubNs,
      });
      const mtu = String(opts.podMtu);
      await ipBatch(
        [
          ['addr', 'add', `198.18.0.${i}/24`, 'dev', 'eth0'],
          ['link', 'set', 'eth0', 'up'],
          ['link', 'add', 'cni0', 'mtu', mtu, 'type', 'bridge'],
          ['addr', 'add', `${formatIp4(subnet.ip + 1)}/24`, 'dev', 'cni0'],
          ['link', 'set', 'cni0', 'up'],
          ['link', 'add', 'vp1', 'mtu', mtu, 'type', 'veth', 'peer', 'name', 'eth0', 'mtu', mtu, 'netns', pod.ns],
          ['link', 'set', 'vp1', 'master', 'cni0', 'up'],
        ],
        { netns: ns },
      );
      await ipBatch(
        [
          ['addr', 'add', `${pod.ip}/24`, 'dev', 'eth0'],
          ['link', 'set', 'eth0', 'up'],
          ['route', 'add', 'default', 'via', formatIp4(subnet.ip + 1)],
        ],
        { netns: pod.ns },
      );
      await run(['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1'], { netns: ns });
      nodes.push({ index: i, ns, ip: `198.18.0.${i}`, subnet, pod });
    }
  } catch (err) {
    await destroy().catch(() => {});
    throw err;
  }
  return { id, hubNs, nodes, destroy };
}

/** What the udp backend does on a node once it knows its lease: flannel0 address + Network route. */
export async function addressFlannel0(node: TopoNode, dev = 'flannel0'): Promise<void> {
  await ipBatch(
    [
      ['addr', 'replace', `${formatIp4(node.subnet.ip)}/32`, 'dev', dev],
      ['route', 'replace', OVERLAY.toString(), 'dev', dev, 'scope', 'global'],
    ],
    { netns: node.ns },
  );
}
