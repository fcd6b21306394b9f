// What the etcd client costs in memory. Starts a real etcd on loopback, puts N leases under
// /coreos.com/network/subnets/, then runs fresh `node` processes that load what the daemon loads
// besides its etcd client (pino, yargs, prom-client) and do what the daemon does with etcd — list the
// subnets, watch them, hold a lease with keepalives — through etcd3 (grpc-js + protobufjs), or no
// client at all (the floor); etcd3-tuned is etcd3 with small gRPC window and session-memory options.
// Reports the median RSS / anonymous memory / heap after the work, a settle and a full GC.
// npx tsx bench/etcd-client-memory.ts [--n=2,6000] [--rounds=3] [--node-flags="--lite-mode --no-expose-wasm"]
import { runNodeScript } from './node-child.js';
import { startEtcd } from '../testbed/etcd.js';

const PREFIX = '/coreos.com/network/subnets/';

type Mode = 'none' | 'etcd3' | 'etcd3-tuned';

const CHILD = `
const mode = process.env.CLIENT_MODE;
const endpoint = process.env.ETCD_ENDPOINT;
const prefix = process.env.SUBNETS_PREFIX;
await import('pino'); await import('yargs'); await import('prom-client');
let count = 0;
const held = new Map();
if (mode === 'etcd3' || mode === 'etcd3-tuned') {
  const { Etcd3 } = await import('etcd3');
  // tuned: the smallest HTTP/2 flow-control window, 1 MB of nghttp2 session memory, no channelz
  // traces, no retry buffers.
  const grpcOptions = mode === 'etcd3' ? {} : { 'grpc-node.flow_control_window': 65535, 'grpc-node.max_session_memory': 1, 'grpc.enable_channelz': 0, 'grpc.enable_retries': 0 };
  const client = new Etcd3({ hosts: [endpoint], grpcOptions });
  const all = await client.getAll().prefix(prefix).strings();
  for (const [k, v] of Object.entries(all)) held.set(k, JSON.parse(v));
  const watcher = await client.watch().prefix(prefix).create();
  watcher.on('put', (kv) => held.set(kv.key.toString(), JSON.parse(kv.value.toString())));
  const lease = client.lease(60, { autoKeepAlive: true });
  await lease.grant();
  await lease.keepaliveOnce();
}
count = held.size;
await new Promise((r) => setTimeout(r, 1500));
globalThis.gc();
await new Promise((r) => setTimeout(r, 500));
const { readFileSync } = await import('node:fs');
const st = readFileSync('/proc/self/status', 'utf8');
const kb = (k) => Number(new RegExp(k + ':\\\\s+(\\\\d+)').exec(st)?.[1] ?? NaN);
const mu = process.memoryUsage();
console.log(JSON.stringify({ count, rssKiB: kb('VmRSS'), anonKiB: kb('RssAnon'), threads: kb('Threads'),
  heapUsedKiB: Math.round(mu.heapUsed / 1024), heapTotalKiB: Math.round(mu.heapTotal / 1024), externalKiB: Math.round(mu.external / 1024) }));
process.exit(0);
`;

interface Figures {
  count: number;
  rssKiB: number;
  anonKiB: number;
  threads: number;
  heapUsedKiB: number;
  heapTotalKiB: number;
  externalKiB: number;
}

function measure(mode: Mode, endpoint: string, nodeFlags: string[]): Promise<Figures> {
  return runNodeScript<Figures>(mode, CHILD, nodeFlags, {
    CLIENT_MODE: mode, ETCD_ENDPOINT: endpoint, SUBNETS_PREFIX: PREFIX,
  });
}

async function putLeases(endpoint: string, from: number, to: number, lease: string): Promise<void> {
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  for (let k = from; k < to; k += 128) {
    const ops = [];
    for (let i = k; i < Math.min(to, k + 128); i++) {
      const ip = `198.19.${(i * 8) >> 8}.${(i * 8) & 255}`;
      const value = JSON.stringify({ PublicIP: `198.18.0.${10 + (i % 240)}`, PublicIPv6: null, BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: `02:4d:00:${((i >> 8) & 255).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}:01` } });
      ops.push({ request_put: { key: b64(`${PREFIX}${ip}-29`), value: b64(value), lease } });
    }
    const res = await fetch(`${endpoint}/v3/kv/txn`, { method: 'POST', body: JSON.stringify({ success: ops }) });
    if (!res.ok) throw new Error(`txn: HTTP ${res.status}`);
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const arg = (name: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3);
  const ns = (arg('n') ?? '2,6000').split(',').map(Number).sort((a, b) => a - b);
  const rounds = Number(arg('rounds') ?? 3);
  // e.g. --node-flags="--lite-mode --no-expose-wasm", as bin/flanneld runs the daemon
  const nodeFlags = (arg('node-flags') ?? '').split(' ').filter(Boolean);
  const etcd = await startEtcd();
  const rows: string[] = [];
  try {
    const grant = (await (await fetch(`${etcd.endpoint}/v3/lease/grant`, { method: 'POST', body: JSON.stringify({ TTL: 3600 }) })).json()) as { ID: string };
    let have = 1;
    for (const n of ns) {
      await putLeases(etcd.endpoint, have, n + 1, grant.ID);
      have = n + 1;
      const runs = new Map<Mode, Figures[]>([['none', []], ['etcd3', []], ['etcd3-tuned', []]]);
      for (let r = 0; r < rounds; r++) for (const mode of runs.keys()) runs.get(mode)!.push(await measure(mode, etcd.endpoint, nodeFlags));
      for (const [mode, figs] of runs) {
        const m = (k: keyof Figures) => median(figs.map((f) => f[k]));
        if (mode !== 'none' && m('count') !== n) throw new Error(`${mode}: held ${m('count')} leases, expected ${n}`);
        const mb = (kib: number) => (kib / 1024).toFixed(1);
        rows.push(`| ${n} | ${mode} | ${mb(m('rssKiB'))} | ${mb(m('anonKiB'))} | ${mb(m('heapUsedKiB'))} / ${mb(m('heapTotalKiB'))} | ${mb(m('externalKiB'))} | ${m('threads')} |`);
      }
    }
  } finally {
    await etcd.stop();
  }
  console.log(`median of ${rounds}; node flags: ${nodeFlags.join(' ') || 'none'}; every process loads pino, yargs and prom-client, then lists, watches and holds a lease`);
  console.log('| leases | etcd client | RSS MB | anon MB | heap used / total MB | external MB | threads |');
  console.log('|---|---|---|---|---|---|---|');
  for (const r of rows) console.log(r);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
