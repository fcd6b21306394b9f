// The flannel CNI plugin in dual stack: on a two-node host-gw cluster with EnableIPv6, the plugin
// (run as a runtime runs it, delegating to Debian's bridge and host-local) gives each pod one address
// of each family from its node's subnets and a default route of each family; pods on the two nodes
// reach each other over IPv4 and IPv6; CHECK passes and DEL releases both addresses. On both paths
// (test/harness/cni.ts): served by the node's flanneld, and standalone.
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CNI_PATHS, type CniPath, callCni, cniBuilt, cniPlugin } from './harness/cni.js';
import { createCluster, type Cluster, type ClusterNode } from '../testbed/cluster.js';
import { addNetns, delNetns, run, runId, waitFor } from '../testbed/netns.js';

const built = cniBuilt('daemon') && cniBuilt('standalone');

async function cni(cniPath: CniPath, dir: string, command: 'ADD' | 'DEL' | 'CHECK', conf: Record<string, unknown>, containerId: string, podNs: string, node: ClusterNode) {
  const res = await callCni(cniPlugin(cniPath, node.cniSocket, dir), { command, conf, containerId, netns: podNs, nodeNs: node.ns });
  return { code: res.code, json: res.json, out: res.stdout + res.stderr };
}

describe.skipIf(!built).each(CNI_PATHS)('flannel CNI plugin (%s path), dual stack (host-gw cluster)', (cniPath) => {
  let cluster: Cluster | null = null;
  const id = runId();
  const podNs = [`cni6-${id}-p1`, `cni6-${id}-p2`];
  const dir = join(tmpdir(), `cni6-${id}`);
  const conf = (node: ClusterNode): Record<string, unknown> => ({
    cniVersion: '1.0.0',
    name: `fl6-${id}`,
    type: 'flannel',
    subnetFile: node.subnetFile,
    dataDir: join(dir, `n${node.index}`, 'flannel'),
    ipam: { dataDir: join(dir, `n${node.index}`, 'ipam') },
    delegate: { hairpinMode: true, isDefaultGateway: true },
  });
  const addrs: { v4: string; v6: string }[] = [];

  beforeAll(async () => {
    mkdirSync(dir);
    const config = { Network: '198.19.0.0/16', EnableIPv6: true, IPv6Network: '2001:2:1::/48', Backend: { Type: 'host-gw' } };
    cluster = await createCluster({ nodes: 2, ipv6: true, config, podsPerNode: 0 });
    for (const ns of podNs) {
      await addNetns(ns);
      // No duplicate address detection wait in the pod: the address is usable at once.
      await run(['sysctl', '-q', '-w', 'net.ipv6.conf.default.accept_dad=0'], { netns: ns });
    }
  }, 60_000);

  afterAll(async () => {
    for (const ns of podNs) await delNetns(ns);
    await cluster?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  it('ADD gives each pod an address and a default route of each family', async () => {
    const c = cluster!;
    for (const [k, node] of c.nodes.entries()) {
      const env = await node.env();
      const add = await cni(cniPath, dir, 'ADD', conf(node), `ctr-${id}-${k}`, podNs[k]!, node);
      expect(add.code, add.out + c.logTail(node)).toBe(0);
      const ips = ((add.json?.['ips'] ?? []) as { address: string; gateway?: string }[]);
      const v4 = ips.find((i) => !i.address.includes(':'));
      const v6 = ips.find((i) => i.address.includes(':'));
      expect(v4?.address).toBe(env['FLANNEL_SUBNET']!.replace(/\.1\//, '.2/'));
      expect(v6?.address).toBe(env['FLANNEL_IPV6_SUBNET']!.replace(/::1\//, '::2/'));
      addrs.push({ v4: v4!.address.split('/')[0]!, v6: v6!.address.split('/')[0]! });
      const default4 = (await run(['ip', '-4', 'route', 'show', 'default'], { netns: podNs[k]! })).stdout;
      const default6 = (await run(['ip', '-6', 'route', 'show', 'default'], { netns: podNs[k]! })).stdout;
      expect(default4).toContain(`default via ${env['FLANNEL_SUBNET']!.split('/')[0]} dev eth0`);
      expect(default6).toContain(`default via ${env['FLANNEL_IPV6_SUBNET']!.split('/')[0]} dev eth0`);
      const check = await cni(cniPath, dir, 'CHECK', { ...conf(node), prevResult: add.json }, `ctr-${id}-${k}`, podNs[k]!, node);
      expect(check.code, check.out).toBe(0);
    }
  });

  it('pods on the two nodes reach each other over IPv4 and IPv6', async () => {
    for (const [from, to] of [[0, 1], [1, 0]] as const) {
      for (const dst of [addrs[to]!.v4, addrs[to]!.v6]) {
        const ok = await waitFor(async () => (await run(['ping', '-c', '1', '-W', '1', dst], { netns: podNs[from]!, allowFail: true })).code === 0, 10_000, 200);
        expect(ok, `pod ${from} -> ${dst}`).toBe(true);
      }
    }
  });

  it('DEL releases both addresses', async () => {
    const c = cluster!;
    for (const [k, node] of c.nodes.entries()) {
      const store = join(dir, `n${node.index}`, 'ipam', `fl6-${id}`);
      expect(existsSync(join(store, addrs[k]!.v4))).toBe(true);
      expect(existsSync(join(store, addrs[k]!.v6))).toBe(true);
      const del = await cni(cniPath, dir, 'DEL', conf(node), `ctr-${id}-${k}`, podNs[k]!, node);
      expect(del.code, del.out).toBe(0);
      expect(existsSync(join(store, addrs[k]!.v4))).toBe(false);
      expect(existsSync(join(store, addrs[k]!.v6))).toBe(false);
    }
  });
});
