// The udp receive path must not launder a corrupted TCP segment. Coalesced super-packets
// go to the kernel with NEEDS_CSUM, so the kernel writes a fresh TCP checksum instead of checking
// the old ones; a datagram that arrived alone may have carried a zero UDP checksum (legal in IPv4,
// checked by nobody). So each such segment's TCP checksum is verified before it is merged, and a
// bad one is written as it came, for the receiving pod to drop.
//
// Node B runs the udp backend; node A is played by a script bound to A's address and port 8285 that
// speaks TCP by hand to a sink in B's pod: a handshake, then a burst of segments (arriving one per
// datagram, so the forwarder coalesces them) of which three carry a payload byte flipped after the
// checksum was computed, then the good copies and a FIN. The sink must receive exactly the good
// bytes. Without the check, the flipped bytes are merged, re-checksummed and delivered.
import { afterAll, beforeAll, expect, test } from 'vitest';
import type { BackendContext } from '../src/backend/backend.js';
import { UdpBackend } from '../src/backend/udp/udp-backend.js';
import type { ForwarderStats } from '../src/backend/udp/native.js';
import { silentLogger } from '../src/common/log.js';
import { parseNetworkConfig, type UdpBackendConfig } from '../src/subnet/config.js';
import type { Lease } from '../src/subnet/lease.js';
import { kernelCounter, nodeScript } from '../testbed/udp-probes.js';
import { createTopology, type TopoNode, type Topology } from '../testbed/udp-topology.js';

const NETWORK = parseNetworkConfig(JSON.stringify({ Network: '198.19.0.0/16', Backend: { Type: 'udp' } }));

let topo: Topology;
let nodeA: TopoNode;
let nodeB: TopoNode;
let backendB: UdpBackend;

const udpLease = (node: TopoNode): Lease => ({ subnet: node.subnet, attrs: { publicIP: node.ip, publicIPv6: null, backend: { type: 'udp' } }, expiration: null });
const statsOf = (b: UdpBackend): ForwarderStats => b.stats() as unknown as ForwarderStats;

beforeAll(async () => {
  topo = await createTopology({ nodes: 2, podMtu: 1472, prefix: 'udpck' });
  [nodeA, nodeB] = topo.nodes as [TopoNode, TopoNode];
  const ctx: BackendContext = { extIface: { name: 'eth0', ifaceIP: nodeB.ip, publicIP: nodeB.ip, mtu: 1500 }, network: NETWORK, log: silentLogger };
  backendB = new UdpBackend(ctx, NETWORK.backend as UdpBackendConfig, { netns: nodeB.ns, resyncIntervalMs: 200 });
  await backendB.prepare();
  await backendB.setOwnLease(udpLease(nodeB));
  await backendB.handleLeaseEvents([{ type: 'added', lease: udpLease(nodeA) }]);
});

afterAll(async () => {
  await backendB?.close();
  await topo?.destroy();
});

// Prints "ready", then "<bytes> <sha256>" of the first connection's data once it ends.
const SINK = `
import net from 'node:net'; import { createHash } from 'node:crypto';
const srv = net.createServer((s) => { const h = createHash('sha256'); let n = 0;
  s.on('data', (d) => { h.update(d); n += d.length; });
  s.on('end', () => { console.log(n + ' ' + h.digest('hex')); s.end(); srv.close(); }); });
srv.listen(Number(process.argv[1]), () => console.log('ready'));`;

// Node A by hand. argv: peer (B's address), dst (B's pod), src (an address of A's subnet), port,
// segments, corrupt (comma list of segment indexes), bind (A's address). Prints JSON: bytes and
// sha256 of the good data.
const CLIENT = `
import dgram from 'node:dgram'; import { createHash, randomBytes } from 'node:crypto';
const [peer, dst, src, port, count, corrupt, bind] = process.argv.slice(1);
const SEG = 1000, SPORT = 40001, DPORT = Number(port), N = Number(count), BAD = new Set(corrupt.split(',').map(Number));
const ip4 = (s) => s.split('.').map(Number);
const fold = (s) => { while (s > 0xffff) s = (s & 0xffff) + (s >>> 16); return s; };
const sum = (b, s = 0) => { for (let i = 0; i < b.length; i += 2) s += (b[i] << 8) | (b[i + 1] ?? 0); return fold(s); };
function packet(seq, ack, flags, payload, opts = Buffer.alloc(0)) {
  const thl = 20 + opts.length, len = 20 + thl + payload.length, p = Buffer.alloc(len);
  p[0] = 0x45; p.writeUInt16BE(len, 2); p.writeUInt16BE(0x4000, 6); p[8] = 64; p[9] = 6;
  p.set(ip4(src), 12); p.set(ip4(dst), 16); p.writeUInt16BE((~sum(p.subarray(0, 20))) & 0xffff, 10);
  const t = p.subarray(20);
  t.writeUInt16BE(SPORT, 0); t.writeUInt16BE(DPORT, 2); t.writeUInt32BE(seq >>> 0, 4); t.writeUInt32BE(ack >>> 0, 8);
  t[12] = (thl / 4) << 4; t[13] = flags; t.writeUInt16BE(65535, 14); opts.copy(t, 20); payload.copy(t, thl);
  const pseudo = Buffer.alloc(12); pseudo.set(ip4(src), 0); pseudo.set(ip4(dst), 4); pseudo[9] = 6; pseudo.writeUInt16BE(thl + payload.length, 10);
  t.writeUInt16BE((~sum(t, sum(pseudo))) & 0xffff, 16);
  return p;
}
const s = dgram.createSocket('udp4');
await new Promise((r) => s.bind(8285, bind, r));
const send = (p) => new Promise((r) => s.send(p, 8285, peer, r));
let onTcp = () => {};
s.on('message', (m) => { if (m.length >= 40 && m[9] === 6 && m.readUInt16BE(20) === DPORT && m.readUInt16BE(22) === SPORT) onTcp(m.subarray(20)); });
const until = async (pred, resend, ms = 300) => { let hit = null; onTcp = (t) => { if (!hit && pred(t)) hit = t; };
  for (let i = 0; i < 60 && !hit; i++) { await resend(); await new Promise((r) => setTimeout(r, ms)); } if (!hit) throw new Error('no answer'); return hit; };
const isn = randomBytes(4).readUInt32BE(0);
const mss = Buffer.from([2, 4, 0x05, 0x78]); // MSS 1400
const synAck = await until((t) => (t[13] & 0x12) === 0x12, () => send(packet(isn, 0, 0x02, Buffer.alloc(0), mss)));
const rack = synAck.readUInt32BE(4) + 1;
await send(packet(isn + 1, rack, 0x10, Buffer.alloc(0)));
const data = randomBytes(SEG * N);
const seg = (i) => packet(isn + 1 + i * SEG, rack, 0x10, data.subarray(i * SEG, (i + 1) * SEG));
const burst = [];
for (let i = 0; i < N; i++) { const p = seg(i); if (BAD.has(i)) p[p.length - 100] ^= 0x40; burst.push(send(p)); }
await Promise.all(burst);
const end = isn + 1 + N * SEG;
// The good copies of the corrupted segments, then FIN, until B's pod acknowledges everything.
await until((t) => ((t.readUInt32BE(8) - (end + 1)) >>> 0) === 0, async () => {
  for (const i of BAD) await send(seg(i));
  await send(packet(end, rack, 0x11, Buffer.alloc(0)));
});
s.close();
console.log(JSON.stringify({ bytes: data.length, sha: createHash('sha256').update(data).digest('hex') }));`;

/** One connection from "node A" to a sink in B's pod; resolves with what was sent and what arrived. */
async function round(port: number): Promise<{ sent: { bytes: number; sha: string }; received: { bytes: number; sha: string } }> {
  const sink = nodeScript(nodeB.pod.ns, SINK, [String(port)], 40_000);
  await sink.ready;
  const srcIp = `${nodeA.subnet.toString().split('.').slice(0, 3).join('.')}.2`; // an address of A's subnet
  const client = await nodeScript(nodeA.ns, CLIENT, [nodeB.ip, nodeB.pod.ip, srcIp, String(port), '40', '7,19,31', nodeA.ip], 40_000).done;
  const [bytes, sha] = (await sink.done).split(' ');
  return { sent: JSON.parse(client) as { bytes: number; sha: string }, received: { bytes: Number(bytes), sha: sha! } };
}

test('a corrupted TCP segment in a coalesced burst is never delivered: the pod gets exactly the good bytes', async () => {
  const before = statsOf(backendB);
  const csumErrorsBefore = await kernelCounter(nodeB.pod.ns, 'TcpInCsumErrors');
  // Whether a corrupted segment lands in the same receive batch as its neighbours depends on
  // scheduling: rounds repeat (each must deliver exactly the good bytes) until one did.
  let rounds = 0;
  do {
    const { sent, received } = await round(7100 + rounds);
    expect(received, `round ${rounds}`).toEqual(sent);
    rounds++;
  } while (statsOf(backendB).rxTcpChecksumBad === before.rxTcpChecksumBad && rounds < 8);
  const after = statsOf(backendB);

  // The conditions under which this test can fail: the segments arrived one per datagram (as
  // zero-checksum datagrams always do: UDP GRO takes only checksummed ones), they were coalesced,
  // and a corrupted one met the check instead of arriving alone.
  expect(after.udpGroRecvs - before.udpGroRecvs).toBe(0);
  expect(after.tunGsoWrites - before.tunGsoWrites).toBeGreaterThan(0);
  expect(after.rxTcpChecksumBad - before.rxTcpChecksumBad, `after ${rounds} rounds`).toBeGreaterThan(0);
  // Written as they came, they were dropped by the pod's kernel.
  expect(await kernelCounter(nodeB.pod.ns, 'TcpInCsumErrors')).toBeGreaterThan(csumErrorsBefore);
});
