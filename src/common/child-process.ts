// Runs a program with an argv array (never through a shell), optionally inside a named network namespace
// (`ip netns exec`, which execs the program itself, so the deadline's kill reaches it), with input on
// stdin and a deadline. iproute2, the netfilter tools, wg and the test harness run through it.
import { spawn } from 'node:child_process';

export interface ProcessOptions {
  netns?: string;
  /** Written to stdin, which is then closed. */
  input?: string;
  /** Killed (SIGKILL) after this long; default 30 s. */
  timeoutMs?: number;
  /** Added to our own environment. */
  env?: Record<string, string>;
}

export interface ProcessResult<Out = string> {
  /** The exit code; 128 when killed by a signal. */
  code: number;
  stdout: Out;
  stderr: string;
  /** Killed for running past the deadline. */
  timedOut: boolean;
  /** The argv actually run (with the `ip netns exec` prefix). */
  argv: string[];
}

/** Resolves when the program ends, whatever its exit; rejects only when it cannot be started. */
export async function runProcess(argv: readonly string[], opts: ProcessOptions = {}): Promise<ProcessResult> {
  const result = await runProcessBytes(argv, opts);
  return { ...result, stdout: result.stdout.toString() };
}

/** runProcess with stdout as bytes (for a digest of it, which needs no decoding). */
export function runProcessBytes(argv: readonly string[], opts: ProcessOptions = {}): Promise<ProcessResult<Buffer>> {
  const full = opts.netns ? ['ip', 'netns', 'exec', opts.netns, ...argv] : [...argv];
  const timeoutMs = opts.timeoutMs ?? 30_000;
  return new Promise((resolve, reject) => {
    const child = spawn(full[0]!, full.slice(1), { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ? { ...process.env, ...opts.env } : process.env });
    const stdout: Buffer[] = [];
    let stderr = '';
    let timedOut = false;
    child.stdout.on('data', (d: Buffer) => stdout.push(d));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${full.join(' ')}: ${err.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : -1), stdout: Buffer.concat(stdout), stderr, timedOut, argv: full });
    });
    child.stdin.on('error', () => {}); // the program may exit without reading its input
    child.stdin.end(opts.input ?? '');
  });
}
