// Runs the netfilter tools — iptables, ip6tables, their -restore, nft — as argv arrays (never through a
// shell), with input on stdin and a deadline on every process: a wedged xtables lock or nft must not hold
// a resync pass forever. With `netns`, the tool runs inside that named network namespace through
// `ip netns exec` (tests; the daemon runs in its own namespace).
import { spawn } from 'node:child_process';

/** How long one tool may run; iptables also waits up to 5 s of it for the xtables lock (-w 5). */
export const TOOL_TIMEOUT_MS = 20_000;

export interface ToolOptions {
  netns?: string;
  /** Written to the tool's stdin (iptables-restore, nft -f -). */
  input?: string;
  timeoutMs?: number;
}

export interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** A tool that could not be run, ran out of time, or (from mustRun) exited with an error. */
export class NetfilterToolError extends Error {
  constructor(
    readonly argv: readonly string[],
    readonly code: number | null,
    readonly stderr: string,
  ) {
    super(`${argv.join(' ')} failed (${code === null ? 'not run' : `exit ${code}`}): ${stderr.trim()}`);
    this.name = 'NetfilterToolError';
  }
}

/** Resolves with the exit code and output; rejects only when the tool cannot be run or times out. */
export function runTool(argv: readonly string[], opts: ToolOptions = {}): Promise<ToolResult> {
  const full = opts.netns ? ['ip', 'netns', 'exec', opts.netns, ...argv] : [...argv];
  const timeoutMs = opts.timeoutMs ?? TOOL_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const child = spawn(full[0]!, full.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new NetfilterToolError(full, null, err.message));
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (timedOut) reject(new NetfilterToolError(full, null, `no answer within ${timeoutMs} ms; killed`));
      else resolve({ code: code ?? -1, stdout, stderr });
    });
    child.stdin.on('error', () => {}); // an early exit is reported by 'close'
    child.stdin.end(opts.input ?? '');
  });
}

/** Runs a tool that must succeed; resolves with its stdout. */
export async function mustRun(argv: readonly string[], opts: ToolOptions = {}): Promise<string> {
  const r = await runTool(argv, opts);
  if (r.code !== 0) throw new NetfilterToolError(opts.netns ? ['ip', 'netns', 'exec', opts.netns, ...argv] : argv, r.code, r.stderr);
  return r.stdout;
}
