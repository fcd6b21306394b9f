// Load: 200 simulated nodes' leases appear, change and disappear (written straight to etcd in
// transactions of 1-6 operations, some bound to short etcd leases that expire by themselves) over
// 30 s, while a real pod pings a pod on another real node. Every change must reach the kernel (the
// vxlan tables match etcd at the end), pod traffic must not notice, and the daemon's memory must
// stay flat. Needs `npm run build`.
import { afterAll, beforeAll, expect, test } from 'vitest';
import { createCluster, rssKiB, subnetOf, type Cluster, type ClusterNode, type Pod } from '../testbed/cluster.js';
import { run, sleep, waitFor } from '../testbed/netns.js';
import { kernelVsEtcd, report, startPing, vxlanTables } from './harness/resilience.js';

const PREFIX = '/coreos.com/network';
const SIMULATED = 200;
// RESILIENCE_LOAD_MS runs a longer soak (the test's own timeout grows with it).
const DURATION_MS = Number(process.env['RESILIENCE_LOAD_MS'] ?? 30_000);
const TICK_MS = 150;

let cluster: Cluster;
let n1: ClusterNode, n2: ClusterNode;
let pod1: Pod, pod2: Pod;

beforeAll(async () => {
  cluster = await createCluster({ nodes: 2, config: { Network: '198.19.0.0/16', Backend: { Type: 'vxlan' } } });
  [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
  [pod1, pod2] = [n1.pods[0]!, n2.pods[0]!];
  expect(await waitFor(() => cluster.ping(pod1, pod2.ip, { timeoutS: 1 }), 10_000, 0)).toBe(true);
}, 90_000);

afterAll(async () => {
  await cluster?.destroy();
});

/** One etcd transaction (etcdctl txn reads compares, then success ops, then failure ops from stdin). */
async function txn(ops: string[]): Promise<void> {
  await run(['etcdctl', `--endpoints=${cluster.etcdEndpoint}`, 'txn'], {
    netns: cluster.hubNs, env: { ETCDCTL_API: '3' }, input: `\n${ops.join('\n')}\n\n\n`,
  });
}

interface SimNode {
  key: string;
  publicIP: string;
  generation: number;
  present: boolean;
}

test('200 simulated nodes churning for 30 s: kernel matches etcd, no pod traffic lost, memory flat', async () => {
  const real = new Set([String(await subnetOf(n1)), String(await subnetOf(n2))]);
  const free: string[] = [];
  for (let c = 1; c <= 255 && free.length < SIMULATED; c++) if (!real.has(`198.19.${c}.0/24`)) free.push(`198.19.${c}.0/24`);
  const sims: SimNode[] = free.map((cidr, i) => ({
    key: `${PREFIX}/subnets/${cidr.replace('/', '-')}`, publicIP: `198.18.0.${10 + (i % 200)}`, generation: 0, present: false,
  }));
  // A fresh VtepMAC each time a simulated node (re)appears, as after a real node's restart.
  const value = (s: SimNode, i: number) => JSON.stringify({
    PublicIP: s.publicIP, PublicIPv6: null, BackendType: 'vxlan',
    BackendData: { VNI: 1, VtepMAC: `02:5e:${(s.generation & 0xff).toString(16).padStart(2, '0')}:00:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 0xff).toString(16).padStart(2, '0')}` },
  });
  const pid = n1.pid!;
  const rss = { start: rssKiB(pid), peak: 0, end: 0 };
  rss.peak = rss.start;
  const samples: number[] = [];
  const sampler = setInterval(() => {
    const now = rssKiB(pid);
    rss.peak = Math.max(rss.peak, now);
    samples.push(now);
  }, 500);
  const ping = startPing(pod1.ns, pod2.ip, 100);
  let ops = 0;
  let expiring = 0;
  const t0 = Date.now();
  try {
    for (let tick = 0; Date.now() - t0 < DURATION_MS; tick++) {
      const batch: string[] = [];
      const n = 1 + Math.floor(Math.random() * 6);
      // Arrivals outnumber departures in the first half, so the set grows to most of the 200.
      const addBias = Date.now() - t0 < DURATION_MS / 2 ? 0.8 : 0.45;
      const touched = new Set<number>();
      for (let k = 0; k < n; k++) {
        const i = Math.floor(Math.random() * sims.length);
        if (touched.has(i)) continue;
        touched.add(i);
        const s = sims[i]!;
        const r = Math.random();
        if (!s.present && r < addBias + 0.1) {
          s.generation++;
          s.present = true;
          batch.push(`put ${s.key} ${value(s, i)}`);
        } else if (s.present && r < 0.15) {
          s.generation++; // same node, new VTEP
          batch.push(`put ${s.key} ${value(s, i)}`);
        } else if (s.present && r > addBias) {
          s.present = false;
          batch.push(`del ${s.key}`);
        }
      }
      if (batch.length > 0) {
        await txn(batch);
        ops += batch.length;
      }
      // Every 3 s a few arrive bound to a 3 s etcd lease that nobody renews: they vanish by expiry.
      if (tick % Math.round(3000 / TICK_MS) === 0) {
        const grant = await cluster.etcdctl(['lease', 'grant', '3']);
        const id = /lease ([0-9a-f]+) granted/.exec(grant)?.[1];
        if (!id) throw new Error(`cannot grant a lease: ${grant}`);
        for (const s of sims.filter((x) => !x.present).slice(0, 3)) {
          s.generation++;
          await cluster.etcdctl(['put', `--lease=${id}`, s.key, value(s, sims.indexOf(s))]);
          s.present = false; // it will expire; treat it as gone for the churn
          expiring++;
          ops++;
        }
      }
      await sleep(TICK_MS);
    }
    await sleep(3500); // the last leases expire
    const settled = Date.now();
    const converged = await waitFor(async () => (await kernelVsEtcd(cluster, n1)) === '', 20_000, 250);
    const convergedMs = Date.now() - settled;
    const present = (await vxlanTables(n1)).routes.size;

    // Everybody leaves at once (two transactions: etcd allows 128 operations in one).
    const keys = sims.map((s) => `del ${s.key}`);
    await txn(keys.slice(0, 100));
    await txn(keys.slice(100));
    const emptied = await waitFor(async () => (await vxlanTables(n1)).routes.size === 1, 20_000, 250);
    clearInterval(sampler);
    await sleep(1000);
    rss.end = rssKiB(pid);
    const result = await ping.stop();
    report(`200 simulated nodes churning for ${DURATION_MS / 1000} s (vxlan)`, {
      operations: ops, viaExpiry: expiring, leasesAtEnd: present, kernelMatchedEtcdAfterMs: converged ? convergedMs : null,
      pingSent: result.sent, pingLost: result.lost, rssKiB: rss,
      rssEvery5sKiB: samples.filter((_, k) => k % 10 === 0),
    });
    expect(converged, await kernelVsEtcd(cluster, n1)).toBe(true);
    expect(present).toBeGreaterThan(50);
    expect(emptied, await kernelVsEtcd(cluster, n1)).toBe(true);
    expect(await kernelVsEtcd(cluster, n1)).toBe('');
    expect(result.received).toBeGreaterThan(DURATION_MS / 100 / 2);
    expect(result.lost).toBe(0);
    // Flat: a 120 s soak (RESILIENCE_LOAD_MS=120000) shows V8 warming up to a plateau in the first
    // ~40 s and no growth after; this bound catches growth that scales with the number of events.
    expect(rss.end - rss.start).toBeLessThan(64 * 1024);
  } finally {
    clearInterval(sampler);
    await ping.stop().catch(() => undefined);
  }
}, DURATION_MS + 90_000);
