// Typed wrapper over the rtnetlink addon (src/native/netlink.cc, built by `npm install` into
// build/Release/flannel_netlink.node): batches of route, neighbour and FDB changes with the kernel's
// verdict per entry, and dumps of the three tables with a digest. Both run on a worker thread.
import { loadBuiltAddon } from '../common/addon.js';
import type { FdbEntry } from './fdb.js';
import type { NeighEntry } from './neigh.js';
import type { RouteEntry } from './route.js';

export interface NetlinkOp {
  kind: 'fdb' | 'neigh' | 'route';
  del: boolean;
  ifindex: number;
  /** Route destination / neighbour address / FDB destination (host-order IPv4). */
  ip: number;
  /** Routes only. */
  prefixLen: number;
  /** Routes: the gateway, 0 for none. */
  gateway: number;
  onlink: boolean;
  /** Neighbours and FDB entries: "aa:bb:cc:dd:ee:ff". */
  mac: string | null;
}

export interface NetlinkDump {
  digest: string;
  /** Absent when the digest equals the one passed in: the tables are as they were then. */
  tables?: { routes: RouteEntry[]; neighs: NeighEntry[]; fdb: FdbEntry[] };
}

interface NativeRtNetlink {
  apply(ops: Uint32Array): Promise<{ errors: Int32Array; messages: [number, string][] }>;
  dump(ifindex: number, lastDigest: string): Promise<{ digest: string; routes?: Uint32Array; neighs?: Uint32Array; fdb?: Uint32Array }>;
  close(): void;
}

interface NetlinkAddon {
  RtNetlink: new (netnsPath?: string) => NativeRtNetlink;
}

let addon: NetlinkAddon | null | undefined;

/** The addon, or null when it was not built (callers fall back to iproute2). */
export function loadNetlink(): NetlinkAddon | null {
  if (addon !== undefined) return addon;
  addon = loadBuiltAddon<NetlinkAddon>('flannel_netlink');
  return addon;
}

const KIND = { fdb: 0, neigh: 1, route: 2 } as const;
const NUD_PERMANENT = 0x80;
const PROTOCOLS: Record<number, string> = { 2: 'kernel', 3: 'boot', 4: 'static' };

function macWords(mac: string | null): [number, number] {
  if (!mac) return [0, 0];
  const b = mac.split(':').map((x) => parseInt(x, 16));
  return [(b[0]! << 8) | b[1]!, ((b[2]! << 24) | (b[3]! << 16) | (b[4]! << 8) | b[5]!) >>> 0];
}

/** Dotted quad of a host-order address (faster than formatIp4's join, for dumps of thousands). */
function ipText(ip: number): string {
  return `${ip >>> 24}.${(ip >>> 16) & 255}.${(ip >>> 8) & 255}.${ip & 255}`;
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

/** Hands the event loop back between chunks of a big dump. */
const yieldTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
const CHUNK = 2000;

function macText(hi: number, lo: number): string {
  return `${HEX[hi >>> 8]}:${HEX[hi & 255]}:${HEX[lo >>> 24]}:${HEX[(lo >>> 16) & 255]}:${HEX[(lo >>> 8) & 255]}:${HEX[lo & 255]}`;
}

export class RtNetlink {
  private readonly native: NativeRtNetlink;

  /** Opens a socket in the named namespace (or /path/to/netns); default: ours. Throws without the addon. */
  constructor(netns?: string) {
    const lib = loadNetlink();
    if (!lib) throw new Error('rtnetlink addon not built (build/Release/flannel_netlink.node): run `npm install`');
    this.native = netns === undefined ? new lib.RtNetlink() : new lib.RtNetlink(netns.includes('/') ? netns : `/run/netns/${netns}`);
  }

  /** Sends every op (one ACK each); resolves with the refused ones: index → the kernel's message. */
  async apply(ops: readonly NetlinkOp[]): Promise<Map<number, string>> {
    const flat = new Uint32Array(ops.length * 8);
    ops.forEach((o, i) => {
      const [hi, lo] = macWords(o.mac);
      flat.set([KIND[o.kind] | (o.del ? 256 : 0), o.ifindex, o.ip, o.prefixLen, o.gateway, o.onlink ? 1 : 0, hi, lo], i * 8);
    });
    const { messages } = await this.native.apply(flat);
    return new Map(messages);
  }

  /** Main-table unicast IPv4 routes, and the neighbours and FDB entries of device `ifindex`. */
  async dump(ifindex: number, lastDigest: string, devName: (ifindex: number) => string): Promise<NetlinkDump> {
    const raw = await this.native.dump(ifindex, lastDigest);
    if (!raw.routes || !raw.neighs || !raw.fdb) return { digest: raw.digest };
    const routes: RouteEntry[] = [];
    for (let i = 0, r = raw.routes; i < r.length; i += 5) {
      routes.push({ dst: `${ipText(r[i]!)}/${r[i + 1]}`, gateway: r[i + 2] ? ipText(r[i + 2]!) : null, dev: devName(r[i + 3]!), onlink: false, protocol: PROTOCOLS[r[i + 4]!] ?? String(r[i + 4]) });
      if ((i / 5) % CHUNK === CHUNK - 1) await yieldTurn();
    }
    const neighs: NeighEntry[] = [];
    for (let i = 0, n = raw.neighs; i < n.length; i += 5) {
      neighs.push({ ip: ipText(n[i]!), mac: n[i + 4] ? macText(n[i + 2]!, n[i + 3]!) : null, permanent: (n[i + 1]! & NUD_PERMANENT) !== 0 });
      if ((i / 5) % CHUNK === CHUNK - 1) await yieldTurn();
    }
    const fdb: FdbEntry[] = [];
    for (let i = 0, f = raw.fdb; i < f.length; i += 4) {
      const mac = macText(f[i]!, f[i + 1]!);
      if (mac !== '00:00:00:00:00:00') fdb.push({ mac, dst: ipText(f[i + 2]!), permanent: (f[i + 3]! & NUD_PERMANENT) !== 0 });
      if ((i / 4) % CHUNK === CHUNK - 1) await yieldTurn();
    }
    return { digest: raw.digest, tables: { routes, neighs, fdb } };
  }

  close(): void {
    this.native.close();
  }
}
