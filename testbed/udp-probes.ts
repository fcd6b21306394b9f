// Small traffic probes for the udp backend's tests: Node snippets run inside a namespace (so they
// use that namespace's addresses), and kernel counters read with nstat.
import { spawn } from 'node:child_process';
import { udpStatSeries } from '../src/daemon/metrics-daemon.js';
import { run } from './netns.js';

export interface NodeScript {
  /** Resolves when the snippet prints "ready" (or once it has exited). */
  ready: Promise<void>;
  /** Its stdout without the "ready" line; rejects on a non-zero exit. */
  done: Promise<string>;
}

/** Runs an ES-module snippet with this Node inside `ns`; argv[1..] of the snippet are `args`. */
export function nodeScript(ns: string, code: string, args: string[] = [], timeoutMs = 40_000): NodeScript {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '--input-type=module', '-e', code, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let onReady: () => void = () => {};
  const ready = new Promise<void>((resolve) => (onReady = resolve));
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    if (out.includes('ready\n')) onReady();
  });
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const done = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out.replace('ready\n', '').trim());
      else reject(new Error(`snippet in ${ns} exited ${code}: ${err.slice(-1000)}`));
    });
  });
  done.catch(() => onReady());
  return { ready, done };
}

/** A kernel SNMP counter of a namespace (nstat without touching its history file). */
export async function kernelCounter(ns: string, name: string): Promise<number> {
  const res = await run(['nstat', '-asz', '--json', name], { netns: ns });
  const parsed = JSON.parse(res.stdout) as { kernel: Record<string, number> };
  return parsed.kernel[name] ?? 0;
}

// IPv4 header checksum, shared by the snippets below.
const IP_SUM = `const sum = (b) => { let s = 0; for (let i = 0; i < b.length; i += 2) s += (b[i] << 8) | (b[i + 1] ?? 0);
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16); return (~s) & 0xffff; };`;

/**
 * Sends well-formed IPv4/UDP packets (to port 9999) as UDP payloads to <target>:8285, the way a
 * peer's forwarder would. argv: target, inner dst, inner src, count. Prints the count.
 */
export const INNER_SENDER = `
import dgram from 'node:dgram';
const [target, dst, src, count] = process.argv.slice(1);
const ip = (s) => s.split('.').map(Number);
${IP_SUM}
const pkt = Buffer.alloc(44, 0x61);
pkt[0] = 0x45; pkt[1] = 0; pkt.writeUInt16BE(44, 2); pkt.writeUInt16BE(0, 4); pkt.writeUInt16BE(0x4000, 6);
pkt[8] = 64; pkt[9] = 17; pkt.writeUInt16BE(0, 10); pkt.set(ip(src), 12); pkt.set(ip(dst), 16); pkt.writeUInt16BE(sum(pkt.subarray(0, 20)), 10);
pkt.writeUInt16BE(40000, 20); pkt.writeUInt16BE(9999, 22); pkt.writeUInt16BE(24, 24); pkt.writeUInt16BE(0, 26);
const s = dgram.createSocket('udp4');
for (let i = 0; i < Number(count); i++) await new Promise((r) => s.send(pkt, 8285, target, r));
s.close(); console.log(count);`;

/**
 * One UDP GSO send (UDP_SEGMENT, which Node's dgram cannot set) of equal-sized TCP segments, as a
 * peer's forwarder sends a burst: the receiving forwarder gets them as one UDP_GRO message and
 * coalesces them. A Python snippet, run as `python3 -c`. argv: target, bind address (sent from
 * its port 8285), inner dst, TCP dst port, payload bytes per segment, then one inner source per
 * segment. The segments are in-order ACKs of one flow per source (each valid: IP and TCP checksums).
 * Prints the count.
 */
export const GSO_TCP_BURST = `
import socket, struct, sys
target, bind, dst, dport, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
srcs = sys.argv[6:]
def csum(b):
    if len(b) % 2: b += b'\\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def segment(src, seq):
    tcp = struct.pack('!HHIIBBHHH', 40002, dport, seq, 1, 5 << 4, 0x10, 65535, 0, 0) + bytes([seq % 251]) * size
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack('!BBH', 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack('!H', csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, socket.inet_aton(src), socket.inet_aton(dst))
    return ip[:10] + struct.pack('!H', csum(ip)) + ip[12:] + tcp
seqs = {}
burst = []
for src in srcs:
    seq = seqs.get(src, 1000)
    burst.append(segment(src, seq))
    seqs[src] = seq + size
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((bind, 8285))
UDP_SEGMENT = 103
s.sendmsg([b''.join(burst)], [(socket.IPPROTO_UDP, UDP_SEGMENT, struct.pack('=H', len(burst[0])))], 0, (target, 8285))
print(len(burst))`;

/** Counts UDP datagrams arriving on port 9999 for argv[1] ms; prints "ready", then the count. */
export const UDP_COUNTER = `
import dgram from 'node:dgram';
const s = dgram.createSocket('udp4'); let n = 0;
s.on('message', () => n++);
s.bind(9999, () => { console.log('ready'); setTimeout(() => { console.log(n); s.close(); }, Number(process.argv[1])); });`;

/**
 * Garbage for a forwarder, one class after another, for argv[3] ms to argv[1]:8285; prints the
 * count sent per class as JSON. argv[2] is the receiver's pod address: well-formed packets to it
 * carry TTL 1 or a broken header; the not-local ones go to argv[5], outside the receiver's
 * subnet. The inner source is argv[4].
 */
export const FUZZER = `
import dgram from 'node:dgram'; import { randomBytes, randomInt } from 'node:crypto';
const [target, podIp, ms, src, elsewhere] = [process.argv[1], process.argv[2], Number(process.argv[3]), process.argv[4], process.argv[5]];
const ip = (s) => s.split('.').map(Number);
${IP_SUM}
const valid = (dst, ttl, len = 48) => { const p = randomBytes(len); p[0] = 0x45; p.writeUInt16BE(len, 2); p.writeUInt16BE(0, 6);
  p[8] = ttl; p[9] = 17; p.writeUInt16BE(0, 10); p.set(ip(src), 12); p.set(ip(dst), 16); p.writeUInt16BE(sum(p.subarray(0, 20)), 10); return p; };
const classes = {
  short: () => randomBytes(randomInt(0, 20)),
  version: () => { const p = valid(podIp, 64); p[0] = 0x65; return p; },
  header: () => { const p = valid(podIp, 64); p[0] = randomInt(2) ? 0x44 : 0x4f; return p; },
  length: () => { const p = valid(podIp, 64, 60); p.writeUInt16BE(randomInt(2) ? 59 : 61 + randomInt(1000), 2); return p; },
  checksum: () => { const p = valid(podIp, 64); p[10] ^= 0x5a; return p; },
  ttl: () => valid(podIp, 1),
  notLocal: () => valid(elsewhere, 64),
  random: () => randomBytes(randomInt(0, 1600)),
};
const sent = Object.fromEntries(Object.keys(classes).map((k) => [k, 0]));
const s = dgram.createSocket('udp4');
const end = Date.now() + ms;
while (Date.now() < end) {
  const batch = [];
  for (const [k, make] of Object.entries(classes)) for (let i = 0; i < 3; i++) { sent[k]++; batch.push(new Promise((r) => s.send(make(), 8285, target, r))); }
  await Promise.all(batch);
  await new Promise((r) => setTimeout(r, 5));
}
s.close(); console.log(JSON.stringify(sent));`;

/** The udp backend's stats as a node's /metrics shows them (Prometheus text), by stats() name. */
export async function udpStatsFromMetrics(ns: string, port: number): Promise<Record<string, number>> {
  const res = await run(['curl', '-sf', `http://127.0.0.1:${port}/metrics`], { netns: ns, allowFail: true });
  if (res.code !== 0) return {};
  const lines = res.stdout.split('\n');
  const stats: Record<string, number> = {};
  for (const [stat, series] of Object.entries(udpStatSeries())) {
    const line = lines.find((l) => l.startsWith(series + ' '));
    if (line !== undefined) stats[stat] = Number(line.slice(series.length + 1));
  }
  return stats;
}
