// What --lite-mode (no JIT: V8's interpreter only, plus optimize-for-size) and the other memory
// flags cost in CPU on the daemon's JS hot paths at 6,000 leases. Each flag set runs in a fresh
// `node` that times, per pass: parsing `ip -json route` output of 6,000 routes into a Map;
// decoding 6,000 lease values with the product's decodeLeaseAttrs (dist/subnet/lease.js); an
// indexed (Map) diff of 6,000 wanted peers against 6,000 kernel entries, the shape of the planned
// linear reconcile; and, when dist/backend/vxlan/peers.js still exports it, the product's planSync
// at 2,000 peers. Median of 15 passes after 5 warm-up passes. npx tsx bench/jit-cost.ts
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { repoRoot } from '../test/harness/cluster.js';

const CHILD = `
const N = 6000;
const dist = process.env.DIST;
const { decodeLeaseAttrs } = await import(dist + '/subnet/lease.js');
const peers = await import(dist + '/backend/vxlan/peers.js').catch(() => ({}));
const { Ip4Net } = await import(dist + '/common/ip4.js');
const ipOf = (k) => '198.19.' + ((k * 8) >> 8) + '.' + ((k * 8) & 255);
const hex = (n) => n.toString(16).padStart(2, '0');
const macOf = (k) => '02:4d:00:' + hex((k >> 8) & 255) + ':' + hex(k & 255) + ':01';
const routesJson = JSON.stringify(Array.from({ length: N }, (_, k) => ({ dst: ipOf(k + 1) + '/29', gateway: ipOf(k + 1), dev: 'flannel.1', protocol: 'boot', scope: 'global', flags: ['onlink'] })));
const values = Array.from({ length: N }, (_, k) => JSON.stringify({ PublicIP: '198.18.0.' + (10 + (k % 240)), PublicIPv6: null, BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: macOf(k + 1) } }));
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const work = {
  'parse ip -json (6,000 routes) into a Map': () => {
    const m = new Map();
    for (const r of JSON.parse(routesJson)) m.set(r.dst, r);
    return m.size;
  },
  'decode 6,000 lease values (decodeLeaseAttrs + MAC check)': () => {
    let ok = 0;
    for (const v of values) { const a = decodeLeaseAttrs(v); if (MAC.test(String(a.backendData.VtepMAC).toLowerCase())) ok++; }
    return ok;
  },
  'indexed diff, 6,000 wanted vs 6,000 kernel (1% differ)': () => {
    const kernel = new Map();
    for (let k = 1; k <= N; k++) kernel.set(ipOf(k) + '/29', k % 100 === 0 ? 'x' : macOf(k));
    const add = [];
    const wanted = new Set();
    for (let k = 1; k <= N; k++) { const key = ipOf(k) + '/29'; wanted.add(key); if (kernel.get(key) !== macOf(k)) add.push(key); }
    const del = [];
    for (const key of kernel.keys()) if (!wanted.has(key)) del.push(key);
    return add.length + del.length;
  },
};
if (peers.planSync) {
  const M = 2000;
  const ps = Array.from({ length: M }, (_, k) => ({ subnet: Ip4Net.parse(ipOf(k + 1) + '/29'), publicIP: '198.18.0.' + (10 + (k % 240)), vtepMac: macOf(k + 1), direct: null }));
  const state = {
    routes: ps.map((p) => ({ dst: p.subnet.toString(), gateway: ipOf(ps.indexOf(p) + 1), dev: 'flannel.1', protocol: 'boot' })),
    neighs: ps.map((p, k) => ({ ip: ipOf(k + 1), mac: p.vtepMac, permanent: true })),
    fdb: ps.map((p) => ({ mac: p.vtepMac, dst: p.publicIP, permanent: true })),
  };
  const ctx = { device: 'flannel.1', extIface: 'eth0', network: Ip4Net.parse('198.19.0.0/16'), subnetLen: 29 };
  work["today's planSync (quadratic scans), 2,000 peers in sync"] = () => { const p = peers.planSync(ps, state, ctx); return p.ip.length + p.fdb.length; };
}
const out = {};
for (const [name, fn] of Object.entries(work)) {
  for (let i = 0; i < 5; i++) fn();
  const times = [];
  for (let i = 0; i < 15; i++) { const t = performance.now(); fn(); times.push(performance.now() - t); }
  times.sort((a, b) => a - b);
  out[name] = times[7];
}
console.log(JSON.stringify(out));
`;

const FLAG_SETS: string[][] = [[], ['--max-semi-space-size=1'], ['--optimize-for-size'], ['--jitless'], ['--lite-mode']];

function runChild(flags: string[]): Promise<Record<string, number>> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...flags, '--input-type=module', '-e', CHILD], {
      env: { ...process.env, DIST: `file://${join(repoRoot(), 'dist')}` }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out) as Record<string, number>) : reject(new Error(`${flags.join(' ')}: ${err.slice(-1000)}`))));
  });
}

async function main(): Promise<void> {
  const results: Record<string, number>[] = [];
  for (const flags of FLAG_SETS) results.push(await runChild(flags));
  const names = Object.keys(results[0]!);
  console.log(`| work (ms per pass, median of 15) | ${FLAG_SETS.map((f) => f.join(' ') || 'no flag').join(' | ')} |`);
  console.log(`|---|${FLAG_SETS.map(() => '---').join('|')}|`);
  for (const n of names) console.log(`| ${n} | ${results.map((r) => r[n]!.toFixed(1)).join(' | ')} |`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
