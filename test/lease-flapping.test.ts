// A key stream that flaps as fast as one etcd client can write, against a real daemon (bin/flanneld,
// vxlan, in a namespace) that knows 2,000 peers: for 30 s one client rewrites a contested pair (two
// keys claiming one subnet: the older keeps it) and a peer whose PublicIP alternates, without pause.
// A genuine new lease put in the middle of the stream must reach the kernel promptly, the daemon's
// memory must not grow with the event rate, and once the stream stops the kernel must match etcd.
// Work waiting for the backend is bounded by the number of distinct keys, never by the event rate.
// Needs `npm run build`.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { Ip4Net, formatIp4 } from '../src/common/ip4.js';
import { bridgeJson } from '../src/routes/ip.js';
import { createCluster, rssKiB, subnetOf, type Cluster, type ClusterNode } from '../testbed/cluster.js';
import { run, sleep, waitFor } from '../testbed/netns.js';
import { WARN, kernelVsEtcd, logSize, readLog, report } from './harness/resilience.js';
import { nodeScript } from '../testbed/udp-probes.js';

const PREFIX = '/coreos.com/network';
const PEERS = 2000;
const STREAM_MS = Number(process.env['FLAPPING_STREAM_MS'] ?? 30_000);
/** Puts in flight at once from the one writing client: enough to keep etcd busy, as a tight loop would. */
const IN_FLIGHT = 64;
const NETWORK = Ip4Net.parse('198.19.0.0/16');

let cluster: Cluster;
let node: ClusterNode;

/** The i-th /29 of the network from the 64th on (198.19.2.0/29 …). */
const subnetAt = (i: number): Ip4Net => new Ip4Net(NETWORK.ip + (64 + i) * 8, 29);
const mac = (i: number): string => `02:5d:00:${(i >> 16).toString(16).padStart(2, '0')}:${((i >> 8) & 255).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`;
const vxlanValue = (publicIP: string, vtepMac: string): string =>
  JSON.stringify({ PublicIP: publicIP, PublicIPv6: null, BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: vtepMac } });

/**
 * One etcd3 client. `puts`: every [key, value] of the file at once, bound to one etcd lease. `flap`:
 * for argv[3] ms, `IN_FLIGHT` puts in flight at all times, cycling through the file's [key, values]
 * (each key's values in turn); prints how many puts etcd acknowledged.
 */
const WRITER = `
import { readFileSync } from 'node:fs';
import { Etcd3 } from 'etcd3';
const [endpoint, mode, file, ms, inFlight] = process.argv.slice(1);
const items = JSON.parse(readFileSync(file, 'utf8'));
const client = new Etcd3({ hosts: endpoint });
if (mode === 'puts') {
  const lease = client.lease(7200, { autoKeepAlive: false });
  await lease.grant();
  await Promise.all(items.map(([k, v]) => lease.put(k).value(v)));
  console.log(items.length);
} else {
  await client.get('warm-up').string();
  console.log('ready');
  const started = Date.now();
  const end = started + Number(ms);
  let n = 0;
  const worker = async () => {
    while (Date.now() < end) {
      const i = n++;
      const [k, values] = items[i % items.length];
      await client.put(k).value(values[Math.floor(i / items.length) % values.length]);
    }
  };
  await Promise.all(Array.from({ length: Number(inFlight) }, worker));
  console.log(JSON.stringify({ puts: n, ms: Date.now() - started }));
}
client.close();`;

function writer(mode: 'puts' | 'flap', items: unknown[], ms = 0) {
  const file = join(cluster.tmpDir, `${mode}-${Date.now()}.json`);
  writeFileSync(file, JSON.stringify(items));
  return nodeScript(cluster.hubNs, WRITER, [cluster.etcdEndpoint, mode, file, String(ms), String(IN_FLIGHT)], ms + 120_000);
}

async function routeCount(): Promise<number> {
  const res = await run(['ip', '-n', node.ns, '-4', 'route', 'show', 'dev', 'flannel.1'], { allowFail: true });
  return res.stdout.split('\n').filter((l) => l.includes(' via ')).length;
}

/** Route, neighbour and FDB entry of one lease are all on flannel.1. */
async function programmed(subnet: Ip4Net, publicIP: string, vtepMac: string): Promise<boolean> {
  const opts = { netns: node.ns, allowFail: true };
  const route = await run(['ip', '-4', 'route', 'show', 'exact', subnet.toString(), 'dev', 'flannel.1'], opts);
  if (!route.stdout.includes(`via ${formatIp4(subnet.ip)}`)) return false;
  const neigh = await run(['ip', '-4', 'neigh', 'show', formatIp4(subnet.ip), 'dev', 'flannel.1'], opts);
  if (!neigh.stdout.includes(vtepMac)) return false;
  const fdb = await bridgeJson<{ mac: string; dst?: string }>(['fdb', 'show', 'dev', 'flannel.1'], { netns: node.ns });
  return fdb.some((e) => e.mac === vtepMac && e.dst === publicIP);
}

beforeAll(async () => {
  cluster = await createCluster({
    nodes: 1,
    podsPerNode: 0,
    startDaemons: false,
    config: { Network: NETWORK.toString(), SubnetLen: 29, Backend: { Type: 'vxlan' } },
  });
  node = cluster.nodes[0]!;
  const peers = Array.from({ length: PEERS }, (_, i) => [`${PREFIX}/subnets/${subnetAt(i).toKey()}`, vxlanValue(`198.18.0.${10 + (i % 240)}`, mac(i))]);
  expect(await writer('puts', peers).done).toBe(String(PEERS));
  // The daemon's production log level: what it writes per event is part of what it costs.
  await cluster.startDaemon(node, ['--log-level=info']);
  expect(await waitFor(async () => (await routeCount()) >= PEERS, 60_000, 250), cluster.logTail(node)).toBe(true);
}, 180_000);

afterAll(async () => {
  await cluster?.destroy();
});

test(`a key flapping as fast as one client writes, for ${STREAM_MS / 1000} s at ${PEERS} peers: a new lease reaches the kernel promptly, memory stays flat, the kernel matches etcd after`, async () => {
  const own = await subnetOf(node);
  const free: Ip4Net[] = [];
  for (let i = PEERS; free.length < 3; i++) if (!subnetAt(i).overlaps(own)) free.push(subnetAt(i));
  const [contested, flapping, fresh] = free as [Ip4Net, Ip4Net, Ip4Net];
  // The contested pair: `a-29` and `a-29&<ipv6>-64` claim the same IPv4 subnet; the first one written is
  // older and keeps it, whatever either value says. The flapping peer's PublicIP alternates, so every
  // change it makes is a real one (its FDB entry moves).
  const older = `${PREFIX}/subnets/${contested.toKey()}`;
  const newer = `${PREFIX}/subnets/${contested.toKey()}&2001:2:1:7::-64`;
  const peer = `${PREFIX}/subnets/${flapping.toKey()}`;
  await cluster.etcdctl(['put', older, vxlanValue('198.18.0.20', mac(9001))]);
  await cluster.etcdctl(['put', newer, vxlanValue('198.18.0.21', mac(9003))]);
  await cluster.etcdctl(['put', peer, vxlanValue('198.18.0.30', mac(9005))]);
  expect(await waitFor(async () => (await kernelVsEtcd(cluster, node)) === '', 20_000, 250), await kernelVsEtcd(cluster, node)).toBe(true);
  await sleep(2000);
  const mark = logSize(node.logFile);
  const rss = { start: rssKiB(node.pid!), peak: 0 };
  rss.peak = rss.start;
  const sampler = setInterval(() => {
    if (node.pid !== null) rss.peak = Math.max(rss.peak, rssKiB(node.pid));
  }, 250);

  const items = [
    [older, [vxlanValue('198.18.0.22', mac(9001)), vxlanValue('198.18.0.20', mac(9002))]],
    [newer, [vxlanValue('198.18.0.23', mac(9003)), vxlanValue('198.18.0.21', mac(9004))]],
    [peer, [vxlanValue('198.18.0.31', mac(9005)), vxlanValue('198.18.0.30', mac(9005))]],
  ];
  let newLeaseMs: number | null = null;
  let stream: { puts: number; ms: number };
  try {
    const flap = writer('flap', items, STREAM_MS);
    await flap.ready;
    const streamStart = Date.now();
    await sleep(STREAM_MS / 2);
    const freshMac = mac(9100);
    await cluster.etcdctl(['put', `${PREFIX}/subnets/${fresh.toKey()}`, vxlanValue('198.18.0.40', freshMac)]);
    const put = Date.now();
    // Measured to the end of the stream and beyond (the figure is reported); asserted below.
    if (await waitFor(() => programmed(fresh, '198.18.0.40', freshMac), STREAM_MS, 25)) newLeaseMs = Date.now() - put;
    stream = JSON.parse(await flap.done) as { puts: number; ms: number };
    const stopped = Date.now();
    const matched = await waitFor(async () => (await kernelVsEtcd(cluster, node)) === '', 5_000, 100);
    const matchedMs = matched ? Date.now() - stopped : null;
    clearInterval(sampler);
    const rssGrowthMiB = (rss.peak - rss.start) / 1024;
    report('flapping key stream', {
      peers: PEERS, puts: stream.puts, putsPerSecond: Math.round(stream.puts / (stream.ms / 1000)), newLeaseInKernelMs: newLeaseMs,
      kernelMatchesEtcdAfterStreamMs: matchedMs, rssStartMiB: Math.round(rss.start / 1024), rssPeakMiB: Math.round(rss.peak / 1024),
      streamStartedAgoMs: put - streamStart,
    });
    expect(stream.puts, 'puts acknowledged during the stream').toBeGreaterThan(STREAM_MS);
    expect(newLeaseMs, 'a new lease put mid-stream reaches the kernel').not.toBeNull();
    expect(newLeaseMs!).toBeLessThanOrEqual(2000);
    expect(rssGrowthMiB).toBeLessThanOrEqual(30);
    expect(matched, await kernelVsEtcd(cluster, node)).toBe(true);
    expect(node.pid, cluster.logTail(node)).not.toBeNull();
    // The newer key of the pair was refused (and said so) before the stream: rewriting it thousands of
    // times is counted, not logged again.
    const warnings = readLog(node.logFile, mark).filter((l) => l.level >= WARN);
    expect(warnings.map((l) => l.msg)).toEqual([]);
  } finally {
    clearInterval(sampler);
  }
}, STREAM_MS * 3 + 120_000);
