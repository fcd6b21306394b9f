// A WireGuard device, from whichever implementation this machine has. The kernel module where
// `ip link add type wireguard` works (as upstream requires); otherwise Debian's wireguard-go, the
// userspace implementation, run and supervised by the daemon — so that pod traffic is encrypted on
// kernels without the module too. Both are configured the same way afterwards (wg(8), see wg.ts).
//
// Lifetimes differ, on purpose:
// - a kernel device is left in place when the daemon stops and reused when it starts (as the vxlan
//   backend's): peers stay configured in the kernel and pod traffic keeps flowing across a restart;
// - wireguard-go stops with the daemon. It runs as our child with a parent-death signal (setpriv
//   --pdeathsig), so even a SIGKILLed daemon leaves no unmanaged tunnel behind holding a device and a
//   UDP port, and a running copy is always one we can supervise (we are its parent: its exit is an
//   event, not something to poll for). The cost is an interruption while the daemon is down; the key
//   file keeps the public key, so peers need no change and traffic resumes with the next handshake.
//   If wireguard-go dies while the daemon runs, it is started again (with backoff) and the backend is
//   told that the device is new and empty.
import { type ChildProcess, spawn } from 'node:child_process';
import type { Logger } from '../../common/log.js';
import { Backoff, pause } from '../../common/retry.js';
import { IpCommandError, ip } from '../../routes/ip.js';
import { readLink } from '../../routes/link.js';
import { WgClient } from '../../routes/wg.js';

export type WireguardImplementation = 'kernel' | 'wireguard-go';

export interface WireguardDeviceOptions {
  /** flannel-wg or flannel-wg-v6. */
  name: string;
  mtu: number;
  log: Logger;
  /** `ip -n NETNS` for the device (tests); default: our own namespace. */
  netns?: string;
  /**
   * An argv prefix for wg and wireguard-go (tests: nsenter into a node's network namespace and a
   * mount namespace with a private /run/wireguard, where wireguard-go puts its UAPI socket).
   */
  enter?: readonly string[];
  /** After wireguard-go was started again: the device is new and holds no key, peer, address or route. */
  onRecreated?: () => void;
  /** The userspace implementation to run; default `wireguard-go` from PATH. */
  wireguardGo?: string;
  /** How long wireguard-go may take to answer on its socket; default 10 s. */
  startTimeoutMs?: number;
}

/** Restarts of a dying wireguard-go: 0.5 s doubling to 30 s; reset once it has run a minute. */
const RESTART_MIN_MS = 500;
const RESTART_MAX_MS = 30_000;
const STABLE_AFTER_MS = 60_000;
const STOP_GRACE_MS = 5_000;

export class WireguardDevice {
  private child: ChildProcess | null = null;
  private closing = false;
  private readonly stopped = new AbortController();
  private readonly wg: WgClient;

  private constructor(
    readonly implementation: WireguardImplementation,
    private readonly opts: WireguardDeviceOptions,
  ) {
    this.wg = new WgClient(opts.enter ? { enter: opts.enter } : {});
  }

  /** The device's name. */
  get name(): string {
    return this.opts.name;
  }

  /** PID of the wireguard-go process now serving the device; null for the kernel module. */
  get pid(): number | null {
    return this.child?.pid ?? null;
  }

  /**
   * Makes the device with the kernel module, or else starts wireguard-go, and sets its MTU. Logs
   * which implementation runs. Throws when neither works, or when a device of that name exists and
   * is not a kernel WireGuard device (it is not ours to take over).
   */
  static async open(opts: WireguardDeviceOptions): Promise<WireguardDevice> {
    const ipOpts = opts.netns ? { netns: opts.netns } : {};
    let implementation: WireguardImplementation = 'kernel';
    try {
      await ip(['link', 'add', 'dev', opts.name, 'mtu', String(opts.mtu), 'type', 'wireguard'], ipOpts);
    } catch (err) {
      if (!(err instanceof IpCommandError)) throw err;
      if (/File exists/.test(err.stderr)) {
        const link = await readLink(opts.name, ipOpts);
        if (link?.kind !== 'wireguard') {
          throw new Error(`${opts.name} exists and is not a kernel WireGuard device (kind ${link?.kind ?? 'unknown'}): delete it, or stop what made it`);
        }
        opts.log.info({ device: opts.name, implementation }, 'wireguard: kernel device exists; reusing it');
      } else if (kernelLacksWireguard(err.stderr)) {
        implementation = 'wireguard-go';
      } else {
        throw err;
      }
    }
    const dev = new WireguardDevice(implementation, opts);
    if (implementation === 'wireguard-go') {
      // wireguard-go would fail on a name in use; say what is in the way instead.
      const existing = await readLink(opts.name, ipOpts);
      if (existing) throw new Error(`${opts.name} exists (kind ${existing.kind ?? 'unknown'}) and the kernel has no WireGuard: delete it, or stop what made it`);
      opts.log.info({ device: opts.name, implementation }, 'wireguard: the kernel has no wireguard module; running wireguard-go (userspace WireGuard)');
      await dev.startUserspace();
      dev.supervise();
    } else {
      opts.log.info({ device: opts.name, implementation }, 'wireguard: using the kernel module');
    }
    await ip(['link', 'set', 'dev', opts.name, 'mtu', String(opts.mtu)], ipOpts);
    return dev;
  }

  /**
   * The kernel device is there: made again (new and empty) when someone deleted it; returns whether it
   * was. wireguard-go's device needs nothing here: wireguard-go exits when its device is deleted, and
   * its supervision starts it again (onRecreated).
   */
  async ensure(): Promise<boolean> {
    if (this.implementation !== 'kernel' || this.closing) return false;
    const ipOpts = this.opts.netns ? { netns: this.opts.netns } : {};
    if (await readLink(this.opts.name, ipOpts)) return false;
    this.opts.log.warn({ device: this.opts.name }, 'wireguard: device disappeared; creating it again');
    await ip(['link', 'add', 'dev', this.opts.name, 'mtu', String(this.opts.mtu), 'type', 'wireguard'], ipOpts);
    return true;
  }

  /**
   * Kernel device: left in place (traffic keeps flowing; the next start reuses it), or deleted with
   * `remove`. wireguard-go: stopped, which removes its device.
   */
  async close(opts: { remove?: boolean } = {}): Promise<void> {
    this.closing = true;
    this.stopped.abort();
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
      await exited;
      clearTimeout(killer);
    }
    this.child = null;
    if (this.implementation === 'kernel' && opts.remove) {
      await ip(['link', 'del', 'dev', this.opts.name], this.opts.netns ? { netns: this.opts.netns } : {});
    }
  }

  /** Starts wireguard-go in the foreground and resolves once its UAPI socket answers. */
  private async startUserspace(): Promise<void> {
    const argv = [...(this.opts.enter ?? []), 'setpriv', '--pdeathsig', 'TERM', this.opts.wireguardGo ?? 'wireguard-go', '-f', this.opts.name];
    const child = spawn(argv[0]!, argv.slice(1), {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD: '1', LOG_LEVEL: 'error' },
    });
    this.child = child;
    let output = '';
    const collect = (d: Buffer): void => {
      output = (output + d.toString()).slice(-4000);
    };
    child.stdout!.on('data', collect);
    child.stderr!.on('data', collect);
    const exited = new Promise<string>((resolve) => {
      child.once('error', (err) => resolve(err.message));
      child.once('exit', (code, signal) => resolve(`exited ${signal ?? code}`));
    });
    const deadline = Date.now() + (this.opts.startTimeoutMs ?? 10_000);
    for (;;) {
      const answered = await this.wg.show(this.opts.name).then(
        () => true,
        () => false,
      );
      if (answered) break;
      const gone = await Promise.race([exited, pause(50).then(() => null)]);
      if (gone !== null || Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`wireguard-go for ${this.opts.name} ${gone ?? 'did not answer on its socket in time'}: ${lastLines(output)}`);
      }
    }
    // From now on its output (errors only, LOG_LEVEL=error) goes to our log.
    child.stdout!.off('data', collect);
    child.stderr!.off('data', collect);
    const forward = (d: Buffer): void => {
      for (const line of d.toString().split('\n')) if (line.trim() !== '') this.opts.log.warn({ device: this.opts.name, line: line.slice(0, 500) }, 'wireguard-go');
    };
    child.stdout!.on('data', forward);
    child.stderr!.on('data', forward);
  }

  /** Starts wireguard-go again whenever it exits while we run. */
  private supervise(): void {
    const backoff = new Backoff(RESTART_MIN_MS, RESTART_MAX_MS, 0.25);
    let startedAt = Date.now();
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      if (this.closing) return;
      if (Date.now() - startedAt > STABLE_AFTER_MS) backoff.reset();
      const delay = backoff.next();
      this.opts.log.warn({ device: this.opts.name, code, signal, restartInMs: delay }, 'wireguard: wireguard-go exited; starting it again');
      void (async () => {
        for (let wait = delay; !this.closing; wait = backoff.next()) {
          await pause(wait, this.stopped.signal);
          if (this.closing) return;
          try {
            await this.startUserspace();
          } catch (err) {
            this.opts.log.error({ device: this.opts.name, err: (err as Error).message }, 'wireguard: cannot start wireguard-go; retrying');
            continue;
          }
          if (this.closing) {
            this.child?.kill('SIGTERM');
            return;
          }
          startedAt = Date.now();
          this.child!.once('exit', onExit);
          await ip(['link', 'set', 'dev', this.opts.name, 'mtu', String(this.opts.mtu)], this.opts.netns ? { netns: this.opts.netns } : {}).catch((err: unknown) =>
            this.opts.log.error({ device: this.opts.name, err: (err as Error).message }, 'wireguard: cannot set the MTU'),
          );
          this.opts.log.info({ device: this.opts.name, pid: this.child!.pid }, 'wireguard: wireguard-go running again');
          this.opts.onRecreated?.();
          return;
        }
      })();
    };
    this.child!.once('exit', onExit);
  }
}

/** `ip link add ... type wireguard` failed because this kernel has no WireGuard (module absent or not loadable). */
export function kernelLacksWireguard(stderr: string): boolean {
  return /Unknown device type|Operation not supported|not supported/i.test(stderr);
}

function lastLines(text: string): string {
  return text.trim().split('\n').slice(-5).join(' | ').slice(0, 800) || '(no output)';
}
