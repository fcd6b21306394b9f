// The rtnetlink path (path.ts), over the addon (src/native/netlink.cc, built by `npm install` into
// build/Release/flannel_netlink.node): batches of route, neighbour and FDB changes of both families
// with the kernel's verdict per entry, and dumps of the three tables, filtered and digested on a
// worker thread; only the tables whose digest changed since the last dump are converted again.
// Entries name devices; the kernel numbers them, so the path keeps the link names it last read.
import { loadBuiltAddon } from '../common/addon.js';
import { Ip4Net } from '../common/ip4.js';
import { Ip6Net, formatIp6 } from '../common/ip6.js';
import {
  type FdbEntry,
  type IpAddr,
  type KernelOp,
  type NeighEntry,
  type RouteEntry,
  type KernelEntry,
  fdbKey,
  isKernelEntry,
  neighKey,
  netFamily,
  routeKey,
} from './entries.js';
import type { DumpScope, KernelDump, KernelPath } from './path.js';

interface NativeRtNetlink {
  apply(ops: Uint32Array): Promise<{ errors: Int32Array; messages: [number, string][] }>;
  dump(roots: Uint32Array, devices: string[], lastDigest: string, heldDigest: string): Promise<{
    digest: string;
    links: [number, string][];
    routes?: Uint32Array;
    neighs?: Uint32Array;
    fdb?: Uint32Array;
  }>;
  links(): Promise<[number, string][]>;
  close(): void;
}

interface NetlinkAddon {
  RtNetlink: new (netnsPath?: string) => NativeRtNetlink;
}

let addon: NetlinkAddon | null | undefined;

/** The addon, or null when it was not built (the reconciler then uses iproute2). */
export function loadNetlink(): NetlinkAddon | null {
  if (addon !== undefined) return addon;
  addon = loadBuiltAddon<NetlinkAddon>('flannel_netlink');
  return addon;
}

/** Words per op, and the op flags, as src/native/netlink.cc reads them. */
const OP_WORDS = 15;
const KIND = { fdb: 0, neigh: 1, route: 2 } as const;
const OP = { delete: 1 << 8, v6: 1 << 9, blackhole: 1 << 10, onlink: 1 << 11, gateway: 1 << 12, protocol: 1 << 13, metric: 1 << 14 };
const ROUTE_WORDS = 16;
const NEIGH_WORDS = 9;
const FDB_WORDS = 9;
const RTN_BLACKHOLE = 6;
const RTNH_F_ONLINK = 4;
const NUD_PERMANENT = 0x80;
/** Entries converted per event-loop turn: a dump of thousands never holds the loop for long. */
const CHUNK = 2000;
const yieldTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

function macText(hi: number, lo: number): string {
  return `${HEX[hi >>> 8]}:${HEX[hi & 255]}:${HEX[lo >>> 24]}:${HEX[(lo >>> 16) & 255]}:${HEX[(lo >>> 8) & 255]}:${HEX[lo & 255]}`;
}

function macWords(mac: string): [number, number] {
  const b = mac.split(':').map((x) => parseInt(x, 16));
  return [(b[0]! << 8) | b[1]!, ((b[2]! << 24) | (b[3]! << 16) | (b[4]! << 8) | b[5]!) >>> 0];
}

/** Dotted quad of a host-order address (quicker than formatIp4's join, for dumps of thousands). */
function ip4Text(ip: number): string {
  return `${ip >>> 24}.${(ip >>> 16) & 255}.${(ip >>> 8) & 255}.${ip & 255}`;
}

const MASK32 = 0xffffffffn;

/** An address as four host-order words, most significant first (IPv4: the first word). */
function writeAddr(out: Uint32Array, at: number, addr: IpAddr): void {
  if (typeof addr === 'number') {
    out[at] = addr;
    return;
  }
  out[at] = Number((addr >> 96n) & MASK32);
  out[at + 1] = Number((addr >> 64n) & MASK32);
  out[at + 2] = Number((addr >> 32n) & MASK32);
  out[at + 3] = Number(addr & MASK32);
}

function readAddr(words: Uint32Array, at: number, family: number): IpAddr {
  if (family === 4) return words[at]!;
  return (BigInt(words[at]!) << 96n) | (BigInt(words[at + 1]!) << 64n) | (BigInt(words[at + 2]!) << 32n) | BigInt(words[at + 3]!);
}

function addrText(addr: IpAddr): string {
  return typeof addr === 'number' ? ip4Text(addr) : formatIp6(addr);
}

export class NetlinkPath implements KernelPath {
  readonly name = 'netlink';
  private readonly native: NativeRtNetlink;
  /** Link names by index, and indexes by name, as last read. */
  private names = new Map<number, string>();
  private indexes = new Map<string, number>();
  /** The tables of the last dump, converted: a table whose digest has not changed since is reused. */
  private held: { digest: string; routes: RouteEntry[]; neighs: NeighEntry[]; fdb: FdbEntry[] } | null = null;

  /** Opens a socket in the named namespace (or /path/to/netns); default: ours. Throws without the addon. */
  constructor(netns?: string) {
    const lib = loadNetlink();
    if (!lib) throw new Error('rtnetlink addon not built (build/Release/flannel_netlink.node): run `npm install`');
    this.native = netns === undefined ? new lib.RtNetlink() : new lib.RtNetlink(netns.includes('/') ? netns : `/run/netns/${netns}`);
  }

  private learnLinks(links: [number, string][]): void {
    this.names = new Map(links);
    this.indexes = new Map(links.map(([i, n]) => [n, i]));
  }

  async apply(ops: readonly KernelOp[]): Promise<(string | null)[]> {
    // Devices are named; the kernel wants indexes. The links read at the last dump serve unless an
    // entry names one not seen then (just created).
    if (ops.some((o) => o.entry.dev !== null && !this.indexes.has(o.entry.dev))) this.learnLinks(await this.native.links());
    const verdicts = await this.send(ops, ops.map((_, i) => i));
    // A device recreated since (a new index under its name): read the links again and resend those once.
    const stale = ops.flatMap((o, i) => (verdicts[i]?.includes('No such device') && o.entry.dev !== null ? [i] : []));
    if (stale.length > 0) {
      this.learnLinks(await this.native.links());
      const again = await this.send(ops, stale);
      for (const i of stale) verdicts[i] = again[i] ?? null;
    }
    return verdicts;
  }

  /** Sends ops[i] for each i in `which` (in that order); the verdict of each, by op index. */
  private async send(ops: readonly KernelOp[], which: readonly number[]): Promise<(string | null)[]> {
    const verdicts: (string | null)[] = new Array<string | null>(ops.length).fill(null);
    const flat = new Uint32Array(which.length * OP_WORDS);
    const sent: number[] = [];
    for (const i of which) {
      const { entry } = ops[i]!;
      const dev = entry.dev;
      if (!isKernelEntry(entry)) verdicts[i] = `a ${entry.kind} entry is not written through rtnetlink`;
      else if (dev !== null && !this.indexes.has(dev)) verdicts[i] = `no device ${dev}`;
      else {
        this.encode(ops[i]!, flat, sent.length * OP_WORDS);
        sent.push(i);
      }
    }
    if (sent.length === 0) return verdicts;
    const { messages } = await this.native.apply(sent.length === which.length ? flat : flat.subarray(0, sent.length * OP_WORDS));
    for (const [k, message] of messages) verdicts[sent[k]!] = message;
    return verdicts;
  }

  private encode(op: KernelOp, out: Uint32Array, at: number): void {
    const e = op.entry as KernelEntry;
    let flags = KIND[e.kind] | (op.action === 'delete' ? OP.delete : 0);
    switch (e.kind) {
      case 'route':
        if (netFamily(e.dst) === 6) flags |= OP.v6;
        if (e.type === 'blackhole') flags |= OP.blackhole;
        if (e.onlink) flags |= OP.onlink;
        out[at + 1] = e.dev !== null ? this.indexes.get(e.dev)! : 0;
        out[at + 2] = e.dst.prefixLen;
        writeAddr(out, at + 3, e.dst.ip);
        if (e.via !== null) {
          flags |= OP.gateway;
          writeAddr(out, at + 7, e.via);
        }
        if (op.action === 'delete' && e.protocol !== undefined) {
          flags |= OP.protocol;
          out[at + 13] = e.protocol;
        }
        if (op.action === 'delete' && e.metric !== undefined) {
          flags |= OP.metric;
          out[at + 14] = e.metric;
        }
        break;
      case 'neigh':
      case 'fdb': {
        // One layout: a neighbour's address and an FDB entry's remote go in the same words.
        const addr = e.kind === 'neigh' ? e.ip : e.dst;
        if (typeof addr === 'bigint') flags |= OP.v6;
        out[at + 1] = this.indexes.get(e.dev)!;
        writeAddr(out, at + 3, addr);
        [out[at + 11], out[at + 12]] = macWords(e.mac);
        break;
      }
    }
    out[at] = flags;
  }

  async dump(scope: DumpScope, skipDigest: string): Promise<KernelDump> {
    const roots = new Uint32Array(scope.routeRoots.length * 6);
    scope.routeRoots.forEach((r, i) => {
      roots[i * 6] = netFamily(r);
      roots[i * 6 + 1] = r.prefixLen;
      writeAddr(roots, i * 6 + 2, r.ip);
    });
    const held = this.held;
    const raw = await this.native.dump(roots, [...scope.devices], skipDigest, held?.digest ?? '');
    this.learnLinks(raw.links);
    if (!raw.routes && !raw.neighs && !raw.fdb && raw.digest === skipDigest) return { digest: raw.digest };
    // A table the native side left out is the one held (its part of the digest is unchanged).
    const routes = raw.routes ? await this.routes(raw.routes) : held!.routes;
    const neighs = raw.neighs ? await this.neighs(raw.neighs) : held!.neighs;
    const fdb = raw.fdb ? await this.fdb(raw.fdb) : held!.fdb;
    this.held = { digest: raw.digest, routes, neighs, fdb };
    return { digest: raw.digest, entries: [...routes, ...neighs, ...fdb] };
  }

  private devName(ifindex: number): string {
    return this.names.get(ifindex) ?? `if${ifindex}`;
  }

  private async routes(r: Uint32Array): Promise<RouteEntry[]> {
    const out: RouteEntry[] = [];
    for (let i = 0, n = 0; i < r.length; i += ROUTE_WORDS, n++) {
      const family = r[i]!;
      const type = r[i + 1] === RTN_BLACKHOLE ? 'blackhole' : 'unicast';
      const dst = family === 4 ? new Ip4Net(r[i + 3]!, r[i + 2]!) : new Ip6Net(readAddr(r, i + 3, 6) as bigint, r[i + 2]!);
      const dstText = family === 4 ? `${ip4Text(r[i + 3]!)}/${r[i + 2]}` : dst.toString();
      out.push({
        kind: 'route',
        key: routeKey(type, dstText),
        dst,
        type,
        via: r[i + 7] ? (family === 4 ? r[i + 8]! : readAddr(r, i + 8, 6)) : null,
        dev: type === 'blackhole' || !r[i + 12] ? null : this.devName(r[i + 12]!),
        onlink: (r[i + 14]! & RTNH_F_ONLINK) !== 0,
        protocol: r[i + 13]!,
        metric: r[i + 15]!,
      });
      if (n % CHUNK === CHUNK - 1) await yieldTurn();
    }
    return out;
  }

  private async neighs(w: Uint32Array): Promise<NeighEntry[]> {
    const out: NeighEntry[] = [];
    for (let i = 0, n = 0; i < w.length; i += NEIGH_WORDS, n++) {
      const ip = w[i] === 4 ? w[i + 2]! : readAddr(w, i + 2, 6);
      const dev = this.devName(w[i + 1]!);
      out.push({ kind: 'neigh', key: neighKey(dev, addrText(ip)), dev, ip, mac: macText(w[i + 7]!, w[i + 8]!), permanent: (w[i + 6]! & NUD_PERMANENT) !== 0 });
      if (n % CHUNK === CHUNK - 1) await yieldTurn();
    }
    return out;
  }

  private async fdb(w: Uint32Array): Promise<FdbEntry[]> {
    const out: FdbEntry[] = [];
    for (let i = 0, n = 0; i < w.length; i += FDB_WORDS, n++) {
      const dev = this.devName(w[i]!);
      const mac = macText(w[i + 1]!, w[i + 2]!);
      out.push({ kind: 'fdb', key: fdbKey(dev, mac), dev, mac, dst: readAddr(w, i + 4, w[i + 3]!), permanent: (w[i + 8]! & NUD_PERMANENT) !== 0 });
      if (n % CHUNK === CHUNK - 1) await yieldTurn();
    }
    return out;
  }

  close(): void {
    this.native.close();
  }
}
