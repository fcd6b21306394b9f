// The underlay interface of a running node deleted and made again (a NIC or driver reload): the kernel
// takes the vxlan devices bound to it, and every route through it, along. Each backend's periodic pass
// puts back what it owns — recreating flannel.1 and flannel-v6.1 with the MACs peers know, or the
// host-gw routes — and pod traffic resumes, on both families, within 10 s of the interface being back.
// Real daemons (bin/flanneld: `npm run build` first), dual stack.
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { createCluster, type Cluster } from '../testbed/cluster.js';
import { run, waitFor } from '../testbed/netns.js';

describe.each(['vxlan', 'host-gw'] as const)('%s', (type) => {
  let cluster: Cluster;

  beforeAll(async () => {
    cluster = await createCluster({
      nodes: 2,
      ipv6: true,
      config: { Network: '198.19.0.0/16', EnableIPv6: true, IPv6Network: '2001:2:1::/48', Backend: { Type: type } },
    });
  }, 120_000);

  afterAll(async () => {
    await cluster?.destroy();
  });

  test('pod traffic resumes within 10 s after the underlay interface is deleted and made again', async () => {
    const [n1, n2] = cluster.nodes;
    const [p1, p2] = [n1!.pods[0]!, n2!.pods[0]!];
    const reach = (from: typeof p1, to: string) => waitFor(() => cluster.ping(from, to, { timeoutS: 1 }), 15_000, 0);
    expect(await reach(p1, p2.ip)).toBe(true);
    expect(await reach(p1, p2.ip6!)).toBe(true);
    const macs = type === 'vxlan' ? (await run(['ip', '-n', n1!.ns, '-br', 'link', 'show', 'type', 'vxlan'])).stdout : '';

    await cluster.replaceUnderlay(n1!);
    if (type === 'vxlan') {
      // The kernel took the devices with the interface they were bound to.
      expect((await run(['ip', '-n', n1!.ns, '-br', 'link', 'show', 'type', 'vxlan'])).stdout.trim()).toBe('');
    }
    const back = await Promise.all([
      waitFor(() => cluster.ping(p1, p2.ip, { timeoutS: 1 }), 10_000, 0),
      waitFor(() => cluster.ping(p2, p1.ip, { timeoutS: 1 }), 10_000, 0),
      waitFor(() => cluster.ping(p1, p2.ip6!, { timeoutS: 1 }), 10_000, 0),
      waitFor(() => cluster.ping(p2, p1.ip6!, { timeoutS: 1 }), 10_000, 0),
    ]);
    expect(back, cluster.logTail(n1!)).toEqual([true, true, true, true]);
    if (type === 'vxlan') {
      // Recreated with the MACs peers have in their FDBs.
      const now = (await run(['ip', '-n', n1!.ns, '-br', 'link', 'show', 'type', 'vxlan'])).stdout;
      const macsOf = (text: string) => text.split('\n').map((l) => l.split(/\s+/).filter(Boolean)).filter((w) => w.length > 2).map((w) => `${w[0]} ${w[2]}`).sort();
      expect(macsOf(now)).toEqual(macsOf(macs));
    }
  });
});
