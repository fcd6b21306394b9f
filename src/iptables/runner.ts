// Runs iptables and iptables-restore with argv arrays (never a shell). With `netns`, the command runs in
// that named network namespace through `ip netns exec` (tests; the daemon itself runs in its own).
import { execFile, spawn } from 'node:child_process';

export interface IptablesRunOptions {
  netns?: string;
  /** Run ip6tables / ip6tables-restore instead (the IPv6 half of a dual-stack rule set). */
  ipv6?: boolean;
}

export interface IptablesResult {
  code: number;
  stdout: string;
  stderr: string;
}

export class IptablesError extends Error {
  constructor(
    readonly argv: readonly string[],
    readonly code: number | null,
    readonly stderr: string,
  ) {
    super(`${argv.join(' ')} failed (exit ${code ?? 'none'}): ${stderr.trim()}`);
    this.name = 'IptablesError';
  }
}

/** Waiting for the xtables lock (legacy backend) rather than failing when another program holds it. */
const WAIT = ['-w', '5'];

function command(binary: string, args: readonly string[], opts: IptablesRunOptions): [string, string[]] {
  return opts.netns ? ['ip', ['netns', 'exec', opts.netns, binary, ...args]] : [binary, [...args]];
}

/**
 * Runs `iptables ARGS`. Resolves with the exit code (a `-C` check exits 1 or 2 when the rule or its
 * chain is missing); rejects only when iptables could not be run at all.
 */
export function runIptables(args: readonly string[], opts: IptablesRunOptions = {}): Promise<IptablesResult> {
  return run(command(opts.ipv6 ? 'ip6tables' : 'iptables', [...WAIT, ...args], opts));
}

function run([file, argv]: [string, string[]]): Promise<IptablesResult> {
  return new Promise((resolve, reject) => {
    execFile(file, argv, { timeout: 30_000 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') {
        reject(new IptablesError([file, ...argv], null, `${err.message} ${String(stderr)}`));
        return;
      }
      resolve({ code: err ? Number(err.code) : 0, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

/** Applies `input` in one `iptables-restore --noflush` transaction: all of it or none of it. */
export function iptablesRestore(input: string, opts: IptablesRunOptions = {}): Promise<void> {
  const [file, argv] = command(opts.ipv6 ? 'ip6tables-restore' : 'iptables-restore', [...WAIT, '--noflush'], opts);
  return new Promise((resolve, reject) => {
    const child = spawn(file, argv, { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (e) => reject(new IptablesError([file, ...argv], null, e.message)));
    child.on('close', (code) => (code === 0 ? resolve() : reject(new IptablesError([file, ...argv], code, stderr))));
    child.stdin.on('error', () => {}); // an early exit is reported by 'close'
    child.stdin.end(input);
  });
}

/** MASQUERADE --random-fully needs iptables 1.6.2 or newer (the same test upstream's go-iptables makes). */
export async function iptablesSupportsRandomFully(opts: IptablesRunOptions = {}): Promise<boolean> {
  const r = await run(command(opts.ipv6 ? 'ip6tables' : 'iptables', ['--version'], opts));
  const m = /v(\d+)\.(\d+)\.(\d+)/.exec(r.stdout);
  if (r.code !== 0 || !m) return false;
  const [major, minor, patch] = [Number(m[1]), Number(m[2]), Number(m[3])];
  return major > 1 || (major === 1 && (minor > 6 || (minor === 6 && patch >= 2)));
}
