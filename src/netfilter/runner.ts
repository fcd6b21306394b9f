// Runs the netfilter tools — iptables, ip6tables, their -restore, nft — through src/common/child-process.ts,
// with a deadline on every process: a wedged xtables lock or nft must not hold a resync pass forever.
// With `netns`, the tool runs inside that named network namespace (tests; the daemon runs in its own).
import { runProcess } from '../common/child-process.js';

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
    super(`${argv.join(' ')} failed${code === null ? '' : ` (exit ${code})`}: ${stderr.trim()}`);
    this.name = 'NetfilterToolError';
  }
}

/** Resolves with the exit code and output; rejects only when the tool cannot be run or times out. */
export async function runTool(argv: readonly string[], opts: ToolOptions = {}): Promise<ToolResult> {
  const timeoutMs = opts.timeoutMs ?? TOOL_TIMEOUT_MS;
  let r;
  try {
    r = await runProcess(argv, { ...opts, timeoutMs });
  } catch (err) {
    throw new NetfilterToolError(argv, null, (err as Error).message);
  }
  if (r.timedOut) throw new NetfilterToolError(r.argv, null, `no answer within ${timeoutMs} ms; killed`);
  return { code: r.code, stdout: r.stdout, stderr: r.stderr };
}

/** Runs a tool that must succeed; resolves with its stdout. */
export async function mustRun(argv: readonly string[], opts: ToolOptions = {}): Promise<string> {
  const r = await runTool(argv, opts);
  if (r.code !== 0) throw new NetfilterToolError(opts.netns ? ['ip', 'netns', 'exec', opts.netns, ...argv] : argv, r.code, r.stderr);
  return r.stdout;
}
