// Configures WireGuard devices through wg(8), for both implementations: the kernel module answers wg
// over generic netlink, wireguard-go over its UAPI socket (/run/wireguard/<dev>.sock), and wg speaks
// each one's protocol. A client of our own for the UAPI text protocol would cover wireguard-go only
// and leave the kernel module to a generic-netlink client besides; wg(8) is one mechanism for both,
// and the reference one. Every call is an argv (never a shell); secrets (the private key, the PSK)
// travel on stdin only, never in argv (visible in /proc to every user) nor in a file. Each call has a
// deadline. Values are checked before they are written, so none can add a line to the configuration.
import { type ProcessResult, runProcess } from '../common/child-process.js';
import { Ip4Net, isIp4 } from '../common/ip4.js';
import { Ip6Net, formatIp6, isIp6, parseIp6 } from '../common/ip6.js';
import { wgKeyFingerprint, wgKeyProblem } from '../common/wg-key.js';

export class WgCommandError extends Error {
  constructor(
    readonly args: readonly string[],
    readonly stderr: string,
    readonly code: number | null,
  ) {
    super(`wg ${args.join(' ')} failed (${code === null ? 'timed out or killed' : `exit ${code}`}): ${stderr.trim().slice(0, 500)}`);
    this.name = 'WgCommandError';
  }
}

/** A peer as we program it. Fields given replace what the device had. */
export interface WgPeerConfig {
  publicKey: string;
  /** The peer's subnets (CIDRs): they replace its allowed IPs, and route to it inside the device. */
  allowedIPs: readonly string[];
  /** Where to send to it (its lease's PublicIP and Port); null leaves the device's as it is (roaming). */
  endpoint: { ip: string; port: number } | null;
  /** The network's PSK; null for none. */
  presharedKey: string | null;
  /** Seconds between keepalives when idle; 0 = off. */
  persistentKeepalive: number;
}

/** A peer as the device reports it (`wg show <dev> dump`). */
export interface WgPeerState {
  publicKey: string;
  hasPresharedKey: boolean;
  /** The PSK's fingerprint (wgKeyFingerprint), null for none: the key itself is dropped by the parser. */
  presharedKeyId: string | null;
  endpoint: string | null;
  allowedIPs: string[];
  /** Null until a handshake completed. */
  latestHandshake: Date | null;
  rxBytes: number;
  txBytes: number;
  persistentKeepalive: number;
}

/** The device as it reports itself; the private key is read and dropped, never returned. */
export interface WgDeviceState {
  publicKey: string | null;
  listenPort: number;
  peers: WgPeerState[];
}

export interface WgClientOptions {
  /** An argv prefix for every wg call, e.g. nsenter into a node's mount and network namespaces (tests). */
  enter?: readonly string[];
  /** Deadline of each call; default 10 s. */
  timeoutMs?: number;
}

/** The all-zero key: what WireGuard uses when a peer has no PSK, so writing it removes one. */
const NO_PSK = 'A'.repeat(43) + '=';
const DEFAULT_TIMEOUT_MS = 10_000;

export class WgClient {
  private readonly enter: readonly string[];
  private readonly timeoutMs: number;

  constructor(opts: WgClientOptions = {}) {
    this.enter = opts.enter ?? [];
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  /** The device's private key and UDP port. */
  async setInterface(dev: string, privateKey: string, listenPort: number): Promise<void> {
    checkKey(privateKey, 'private key');
    checkPort(listenPort, 'listen port');
    await this.run(['set', dev, 'listen-port', String(listenPort), 'private-key', '/dev/stdin'], privateKey + '\n');
  }

  /**
   * Adds or updates peers in one call (`wg addconf`): each peer's allowed IPs, PSK and keepalive are
   * replaced by the ones given, and its endpoint when one is given. Other peers are not touched.
   */
  async setPeers(dev: string, peers: readonly WgPeerConfig[]): Promise<void> {
    if (peers.length === 0) return;
    await this.run(['addconf', dev, '/dev/stdin'], peersConfigText(peers));
  }

  /** Removes peers by public key in one call; a key the device does not have is ignored. */
  async removePeers(dev: string, publicKeys: readonly string[]): Promise<void> {
    if (publicKeys.length === 0) return;
    const args = ['set', dev];
    for (const key of publicKeys) {
      checkKey(key, 'public key');
      args.push('peer', key, 'remove');
    }
    await this.run(args);
  }

  /** What the device holds now. */
  async show(dev: string): Promise<WgDeviceState> {
    return parseDump(await this.run(['show', dev, 'dump']));
  }

  /** What the device holds now, or null when there is no such device (or no wireguard-go serving it). */
  async showIfPresent(dev: string): Promise<WgDeviceState | null> {
    try {
      return await this.show(dev);
    } catch (err) {
      if (deviceAbsent(err)) return null;
      throw err;
    }
  }

  private async run(args: string[], input?: string): Promise<string> {
    // wg opens /dev/stdin by name, which fails (ENXIO) on the socket Node gives a child as stdin:
    // `cat` turns it into a real pipe. The script is fixed; wg's arguments stay separate words ("$@").
    const argv = input === undefined ? [...this.enter, 'wg', ...args] : [...this.enter, 'sh', '-c', 'cat | exec wg "$@"', 'wg', ...args];
    let result: ProcessResult;
    try {
      result = await runProcess(argv, { timeoutMs: this.timeoutMs, ...(input === undefined ? {} : { input }) });
    } catch (err) {
      throw new WgCommandError(args, (err as Error).message, null);
    }
    if (result.timedOut) throw new WgCommandError(args, `no answer within ${this.timeoutMs} ms`, null);
    if (result.code !== 0) throw new WgCommandError(args, result.stderr, result.code);
    return result.stdout;
  }
}

/**
 * Whether wg failed because the device is not there: no kernel device of that name ("No such device"),
 * or no wireguard-go socket for it and no kernel WireGuard to ask instead ("Protocol not supported",
 * "No such file or directory").
 */
export function deviceAbsent(err: unknown): boolean {
  return err instanceof WgCommandError && err.code !== null && /No such device|Protocol not supported|No such file or directory/.test(err.stderr);
}

function checkKey(key: string, what: string): void {
  const problem = wgKeyProblem(key);
  if (problem !== null) throw new Error(`WireGuard ${what}: ${problem}`);
}

function checkPort(port: number, what: string): void {
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`WireGuard ${what} must be 1-65535, got ${port}`);
}

/** "ip:port" or "[ip6]:port", canonical. */
export function formatEndpoint(endpoint: { ip: string; port: number }): string {
  checkPort(endpoint.port, 'endpoint port');
  if (isIp4(endpoint.ip)) return `${endpoint.ip}:${endpoint.port}`;
  if (isIp6(endpoint.ip)) return `[${formatIp6(parseIp6(endpoint.ip))}]:${endpoint.port}`;
  throw new Error(`WireGuard endpoint address "${endpoint.ip.slice(0, 64)}" is not an IP address`);
}

/** One CIDR, canonical; anything else refused. */
function canonicalCidr(cidr: string): string {
  try {
    return (cidr.includes(':') ? Ip6Net.parse(cidr) : Ip4Net.parse(cidr)).toString();
  } catch (err) {
    throw new Error(`WireGuard allowed IP: ${(err as Error).message}`);
  }
}

/** The configuration text `setPeers` hands wg: one [Peer] section each, every value checked. */
export function peersConfigText(peers: readonly WgPeerConfig[]): string {
  return peers.map(peerSection).join('');
}

function peerSection(p: WgPeerConfig): string {
  checkKey(p.publicKey, 'public key');
  if (p.presharedKey !== null) checkKey(p.presharedKey, 'preshared key');
  if (!Number.isInteger(p.persistentKeepalive) || p.persistentKeepalive < 0 || p.persistentKeepalive > 65535) {
    throw new Error(`WireGuard persistent keepalive must be 0-65535 seconds, got ${p.persistentKeepalive}`);
  }
  const lines = [
    '[Peer]',
    `PublicKey = ${p.publicKey}`,
    // Always written, so that the device's PSK is the one configured (the zero key means none).
    `PresharedKey = ${p.presharedKey ?? NO_PSK}`,
    // An empty list is legal and clears the peer's allowed IPs.
    `AllowedIPs = ${p.allowedIPs.map(canonicalCidr).join(', ')}`,
    `PersistentKeepalive = ${p.persistentKeepalive === 0 ? 'off' : p.persistentKeepalive}`,
  ];
  if (p.endpoint !== null) lines.push(`Endpoint = ${formatEndpoint(p.endpoint)}`);
  return lines.join('\n') + '\n';
}

const none = (field: string): string | null => (field === '(none)' ? null : field);

/** Parses `wg show <dev> dump`: the device's line, then one line per peer, fields separated by tabs. */
export function parseDump(text: string): WgDeviceState {
  const lines = text.split('\n').filter((l) => l !== '');
  const device = lines.shift()?.split('\t');
  // The device line starts with the private key: it is dropped here and never part of an error.
  if (!device || device.length < 4) throw new Error('wg show dump: no device line');
  const state: WgDeviceState = { publicKey: none(device[1]!), listenPort: Number(device[2]), peers: [] };
  for (const line of lines) {
    const f = line.split('\t');
    if (f.length < 8) throw new Error(`wg show dump: a peer line has ${f.length} fields, not 8`);
    const handshake = Number(f[4]);
    const allowed = none(f[3]!);
    const psk = none(f[1]!);
    state.peers.push({
      publicKey: f[0]!,
      hasPresharedKey: psk !== null,
      presharedKeyId: psk === null ? null : wgKeyFingerprint(psk),
      endpoint: none(f[2]!),
      allowedIPs: allowed === null ? [] : allowed.split(','),
      latestHandshake: handshake > 0 ? new Date(handshake * 1000) : null,
      rxBytes: Number(f[5]),
      txBytes: Number(f[6]),
      persistentKeepalive: f[7] === 'off' ? 0 : Number(f[7]),
    });
  }
  return state;
}
