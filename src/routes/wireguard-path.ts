// The WireGuard path (path.ts's WgPath): WireGuard devices' settings and peers as reconciled entries
// (entries.ts: `wgdev`, `wgpeer`), written and read through wg(8) (wg.ts) — the kernel module's
// devices and wireguard-go's alike. The secrets (the device's private key, the network's PSK) are held
// here and written on wg's stdin; entries name them only by the public key and the PSK's fingerprint,
// so that no entry, plan or log line ever carries one.
//
// Writes: each device's settings with one `wg set`; peers of one device in one `wg addconf` (added or
// updated, each with exactly its allowed IPs, endpoint, PSK and keepalive; the device's other peers
// untouched) and removals in one `wg set ... remove`. A call is all-or-nothing for the verdicts, so a
// refused batch is split in halves until the peer the device refuses stands alone: it is refused, the
// others go in. A device that is not there refuses its whole batch at once, without splitting.
// Reads: `wg show <dev> dump`, with a digest of what a reconcile compares (not the handshake times and
// byte counts, which change with every packet): an unchanged device costs no entries built.
import { createHash } from 'node:crypto';
import { Ip4Net, isIp4, parseIp4 } from '../common/ip4.js';
import { Ip6Net, parseIp6 } from '../common/ip6.js';
import { wgKeyFingerprint } from '../common/wg-key.js';
import { type IpNet, type KernelOp, type ReconciledEntry, type WgDeviceEntry, type WgPeerEntry, formatIp, wgDevice, wgPeer } from './entries.js';
import type { KernelDump, WgPath } from './path.js';
import { type WgClient, type WgDeviceState, type WgPeerConfig, peersConfigText } from './wg.js';

/** The secrets a node's devices are configured with. */
export interface WgSecrets {
  privateKey: string;
  /** The private key's public key: the one `wgdev` entries name. */
  publicKey: string;
  /** The network's PSK; null for none. */
  presharedKey: string | null;
}

export class WireguardPath implements WgPath {
  private readonly pskId: string | null;

  constructor(
    private readonly wg: WgClient,
    private readonly secrets: WgSecrets,
  ) {
    this.pskId = secrets.presharedKey === null ? null : wgKeyFingerprint(secrets.presharedKey);
  }

  async apply(ops: readonly KernelOp[]): Promise<(string | null)[]> {
    const verdicts: (string | null)[] = new Array<string | null>(ops.length).fill(null);
    // Consecutive ops of one kind and action, per device, in one call each; groups in the plan's order.
    for (let start = 0; start < ops.length; ) {
      const { kind } = ops[start]!.entry;
      const { action } = ops[start]!;
      let end = start + 1;
      while (end < ops.length && ops[end]!.entry.kind === kind && ops[end]!.action === action) end++;
      const byDevice = new Map<string, number[]>();
      for (let i = start; i < end; i++) {
        const dev = ops[i]!.entry.dev!;
        byDevice.set(dev, [...(byDevice.get(dev) ?? []), i]);
      }
      for (const [dev, indexes] of byDevice) {
        if (kind === 'wgdev') await this.applyDevice(ops, indexes, verdicts);
        else if (kind === 'wgpeer' && action === 'delete') await this.removePeers(dev, ops, indexes, verdicts);
        else if (kind === 'wgpeer') await this.setPeers(dev, ops, indexes, verdicts);
        else for (const i of indexes) verdicts[i] = `a ${kind} entry is not written through wg(8)`;
      }
      start = end;
    }
    return verdicts;
  }

  private async applyDevice(ops: readonly KernelOp[], indexes: readonly number[], verdicts: (string | null)[]): Promise<void> {
    for (const i of indexes) {
      const e = ops[i]!.entry as WgDeviceEntry;
      if (ops[i]!.action === 'delete') verdicts[i] = 'a WireGuard device keeps its key and port until it is deleted';
      else if (e.publicKey !== this.secrets.publicKey) verdicts[i] = `no private key here for the public key ${e.publicKey ?? '(none)'}`;
      else verdicts[i] = await this.wg.setInterface(e.dev, this.secrets.privateKey, e.listenPort).then(() => null, (err: unknown) => this.message(err));
    }
  }

  private async removePeers(dev: string, ops: readonly KernelOp[], indexes: readonly number[], verdicts: (string | null)[]): Promise<void> {
    const keys = indexes.map((i) => ({ i, item: (ops[i]!.entry as WgPeerEntry).publicKey }));
    await this.inParts(dev, keys, (part) => this.wg.removePeers(dev, part), verdicts);
  }

  private async setPeers(dev: string, ops: readonly KernelOp[], indexes: readonly number[], verdicts: (string | null)[]): Promise<void> {
    const peers: { i: number; item: WgPeerConfig }[] = [];
    for (const i of indexes) {
      const e = ops[i]!.entry as WgPeerEntry;
      if (e.psk !== null && e.psk !== this.pskId) {
        verdicts[i] = `no preshared key here with the fingerprint ${e.psk}`;
        continue;
      }
      const peer: WgPeerConfig = {
        publicKey: e.publicKey,
        allowedIPs: e.allowedIPs.map((n) => n.toString()),
        endpoint: e.endpoint === null ? null : { ip: formatIp(e.endpoint.ip), port: e.endpoint.port },
        presharedKey: e.psk === null ? null : this.secrets.presharedKey,
        persistentKeepalive: e.keepalive,
      };
      try {
        peersConfigText([peer]); // every value checked on its own: a bad one is refused alone, never sent
      } catch (err) {
        verdicts[i] = this.message(err);
        continue;
      }
      peers.push({ i, item: peer });
    }
    await this.inParts(dev, peers, (part) => this.wg.setPeers(dev, part), verdicts);
  }

  /**
   * Writes `items` in one call; when it is refused, in halves, down to the single item the device
   * refuses. A device that is not there refuses them all at once.
   */
  private async inParts<T>(dev: string, items: readonly { i: number; item: T }[], write: (part: T[]) => Promise<void>, verdicts: (string | null)[], top = true): Promise<void> {
    if (items.length === 0) return;
    try {
      await write(items.map((x) => x.item));
      return;
    } catch (err) {
      if (items.length === 1) {
        verdicts[items[0]!.i] = this.message(err);
        return;
      }
      if (top && (await this.wg.showIfPresent(dev).catch(() => null)) === null) {
        const message = `no WireGuard device ${dev}: ${this.message(err)}`;
        for (const { i } of items) verdicts[i] = message;
        return;
      }
    }
    const half = Math.ceil(items.length / 2);
    await this.inParts(dev, items.slice(0, half), write, verdicts, false);
    await this.inParts(dev, items.slice(half), write, verdicts, false);
  }

  /** An error's message, with the secrets taken out should wg ever quote a line of what it was given. */
  private message(err: unknown): string {
    let text = (err as Error).message;
    text = text.split(this.secrets.privateKey).join('(private key)');
    if (this.secrets.presharedKey !== null) text = text.split(this.secrets.presharedKey).join('(preshared key)');
    return text;
  }

  async dump(devices: readonly string[], skipDigest: string): Promise<KernelDump<ReconciledEntry>> {
    const states = await Promise.all(devices.map((dev) => this.wg.showIfPresent(dev)));
    const hash = createHash('sha1');
    devices.forEach((dev, k) => hash.update(describeState(dev, states[k]!)));
    const digest = hash.digest('hex');
    if (digest === skipDigest) return { digest };
    const entries: ReconciledEntry[] = [];
    devices.forEach((dev, k) => {
      const state = states[k];
      if (state) entries.push(...entriesOf(dev, state));
    });
    return { digest, entries };
  }
}

/**
 * What a reconcile compares of a device, as one text: its settings and its peers' (no counters, no
 * times), peers and their allowed IPs sorted — wireguard-go lists peers in no particular order.
 */
function describeState(dev: string, state: WgDeviceState | null): string {
  if (state === null) return `${dev} absent\n`;
  const peers = state.peers.map((p) => `${p.publicKey} ${p.presharedKeyId ?? '-'} ${p.endpoint ?? '-'} ${[...p.allowedIPs].sort().join(',')} ${p.persistentKeepalive}`).sort();
  return [`${dev} ${state.publicKey ?? '-'} ${state.listenPort}`, ...peers].join('\n') + '\n';
}

/** A device's state as entries: its settings, and each peer. */
export function entriesOf(dev: string, state: WgDeviceState): (WgDeviceEntry | WgPeerEntry)[] {
  const out: (WgDeviceEntry | WgPeerEntry)[] = [wgDevice(dev, state.publicKey, state.listenPort)];
  for (const p of state.peers) {
    out.push(wgPeer(dev, p.publicKey, {
      allowedIPs: p.allowedIPs.map(parseCidr),
      endpoint: p.endpoint === null ? null : parseEndpoint(p.endpoint),
      keepalive: p.persistentKeepalive,
      psk: p.presharedKeyId,
    }));
  }
  return out;
}

function parseCidr(text: string): IpNet {
  return text.includes(':') ? Ip6Net.parse(text) : Ip4Net.parse(text);
}

/** "198.18.0.2:51820" or "[2001:2::2]:51821", as wg prints an endpoint. */
export function parseEndpoint(text: string): { ip: number | bigint; port: number } {
  const m = /^\[(.+)\]:(\d+)$/.exec(text) ?? /^([^:]+):(\d+)$/.exec(text);
  if (!m) throw new Error(`wg show dump: an endpoint "${text.slice(0, 64)}" is not address:port`);
  return { ip: isIp4(m[1]!) ? parseIp4(m[1]!) : parseIp6(m[1]!), port: Number(m[2]) };
}
