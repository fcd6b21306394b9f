// How the WireGuard path splits a batch the device refuses. `wg addconf` answers for the whole batch,
// so a refused batch is written again in halves until the peer the device refuses stands alone. A real
// device refuses no well-formed peer we could hand it (every value is checked before it is written),
// so here a client stands in for wg whose device refuses chosen public keys, and records each call.
// What the path does with a real wg and a real device is in test/wireguard-backend.test.ts.
import { describe, expect, test } from 'vitest';
import { generatePrivateKey, publicKeyOf } from '../src/backend/wireguard/keys.js';
import { Ip4Net } from '../src/common/ip4.js';
import { type KernelOp, wgPeer } from '../src/routes/entries.js';
import { WgClient, WgCommandError, type WgDeviceState, type WgPeerConfig } from '../src/routes/wg.js';
import { WireguardPath } from '../src/routes/wireguard-path.js';

class RefusingDevice extends WgClient {
  readonly calls: string[][] = [];
  readonly held = new Set<string>();

  constructor(
    private readonly refused: ReadonlySet<string>,
    private readonly present = true,
  ) {
    super();
  }

  override async setPeers(dev: string, peers: readonly WgPeerConfig[]): Promise<void> {
    this.calls.push(peers.map((p) => p.publicKey));
    if (!this.present) throw new WgCommandError(['addconf', dev, '/dev/stdin'], 'Unable to modify interface: No such device\n', 1);
    const bad = peers.find((p) => this.refused.has(p.publicKey));
    if (bad) throw new WgCommandError(['addconf', dev, '/dev/stdin'], 'Unable to modify interface: Cannot allocate memory\n', 1);
    for (const p of peers) this.held.add(p.publicKey);
  }

  override async showIfPresent(): Promise<WgDeviceState | null> {
    return this.present ? { publicKey: null, listenPort: 0, peers: [] } : null;
  }
}

function ops(n: number): KernelOp[] {
  return Array.from({ length: n }, (_, i) => ({
    action: 'replace' as const,
    owner: `198.19.${i}.0/24`,
    entry: wgPeer('flannel-wg', publicKeyOf(generatePrivateKey()), { allowedIPs: [Ip4Net.parse(`198.19.${i}.0/24`)], endpoint: { ip: 0xc6120000 + i, port: 51820 }, keepalive: 0, psk: null }),
  }));
}

const keyOf = (op: KernelOp): string => (op.entry as { publicKey: string }).publicKey;
const secrets = { privateKey: generatePrivateKey(), publicKey: 'unused', presharedKey: null };

describe('a refused batch is split until the refused peer stands alone', () => {
  test('one refused among 16: it alone is refused, the 15 others go in, in a handful of calls', async () => {
    const batch = ops(16);
    const device = new RefusingDevice(new Set([keyOf(batch[11]!)]));
    const verdicts = await new WireguardPath(device, secrets).apply(batch);
    expect(verdicts.map((v, i) => (v === null ? null : i))).toEqual(batch.map((_, i) => (i === 11 ? 11 : null)));
    expect(verdicts[11]).toMatch(/Cannot allocate memory/);
    expect(device.held.size).toBe(15);
    // 16 → 8 + 8 → (4 + 4) → (2 + 2) → (1 + 1): one call per level on the refused side, one per good half.
    expect(device.calls.length).toBe(9);
  });

  test('two refused: both alone, the rest in', async () => {
    const batch = ops(10);
    const device = new RefusingDevice(new Set([keyOf(batch[0]!), keyOf(batch[9]!)]));
    const verdicts = await new WireguardPath(device, secrets).apply(batch);
    expect(verdicts.flatMap((v, i) => (v === null ? [] : [i]))).toEqual([0, 9]);
    expect(device.held.size).toBe(8);
  });

  test('a device that is not there refuses the whole batch at once, without splitting it', async () => {
    const device = new RefusingDevice(new Set(), false);
    const verdicts = await new WireguardPath(device, secrets).apply(ops(64));
    expect(new Set(verdicts)).toEqual(new Set(['no WireGuard device flannel-wg: wg addconf flannel-wg /dev/stdin failed (exit 1): Unable to modify interface: No such device']));
    expect(device.calls.length).toBe(1);
  });
});

describe('the dump', () => {
  test('the digest is of what a reconcile compares: the order wireguard-go lists peers in, and handshakes and byte counts, do not change it', async () => {
    const peer = (n: number, handshake: number | null, rx: number) => ({
      publicKey: Buffer.alloc(32, n).toString('base64'), hasPresharedKey: false, presharedKeyId: null, endpoint: `198.18.0.${n}:51820`,
      allowedIPs: [`198.19.${n}.0/24`, `2001:2:1:${n}::/64`], latestHandshake: handshake === null ? null : new Date(handshake), rxBytes: rx, txBytes: rx, persistentKeepalive: 0,
    });
    const listed = (order: number[], seen: number) => new (class extends WgClient {
      override async showIfPresent(): Promise<WgDeviceState> {
        return { publicKey: Buffer.alloc(32, 9).toString('base64'), listenPort: 51820, peers: order.map((n) => ({ ...peer(n, seen, seen), allowedIPs: seen % 2 ? peer(n, 0, 0).allowedIPs.reverse() : peer(n, 0, 0).allowedIPs })) };
      }
    })();
    const first = await new WireguardPath(listed([1, 2, 3], 1000), secrets).dump(['flannel-wg'], '');
    const again = await new WireguardPath(listed([3, 1, 2], 2001), secrets).dump(['flannel-wg'], first.digest);
    expect(again).toEqual({ digest: first.digest });
    expect(first.entries!.map((e) => e.kind)).toEqual(['wgdev', 'wgpeer', 'wgpeer', 'wgpeer']);
    const moved = await new WireguardPath(listed([1, 2], 1000), secrets).dump(['flannel-wg'], first.digest);
    expect(moved.digest).not.toBe(first.digest);
  });
});
