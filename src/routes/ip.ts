// Runs iproute2 (`ip`, and `bridge` for the vxlan FDB). Arguments are passed as an argv array (never
// through a shell), so lease data from etcd can never be interpreted as shell syntax. Batches go
// through `ip -batch -` on stdin; every batch word is checked (src/routes/words.ts) so that none can
// change how iproute2 splits a line. Every child gets a deadline: a hung `ip` fails its call (and is
// killed) instead of holding the kernel work behind it.
import { runProcessBytes } from '../common/child-process.js';
import { assertSafeWord } from './words.js';

/** How long one `ip`/`bridge` process may run (a batch of thousands of entries takes well under a second). */
export const IP_TIMEOUT_MS = 30_000;

export class IpCommandError extends Error {
  constructor(
    readonly args: readonly string[],
    readonly stderr: string,
    readonly code: number | null,
    /** The process ran past its deadline and was killed. */
    readonly timedOut = false,
  ) {
    super(timedOut ? `ip ${args.join(' ')} did not finish in time and was killed` : `ip ${args.join(' ')} failed (exit ${code}): ${stderr.trim()}`);
    this.name = 'IpCommandError';
  }
}

export interface IpOptions {
  /** Run inside this named network namespace (ip -n NAME); default: the caller's own. */
  netns?: string;
  /** Kill the process and fail after this long; default IP_TIMEOUT_MS. */
  timeoutMs?: number;
}

function baseArgs(opts: IpOptions): string[] {
  return opts.netns ? ['-n', opts.netns] : [];
}

export type Tool = 'ip' | 'bridge';

function runTool(tool: Tool, args: readonly string[], opts: IpOptions): Promise<string> {
  return toolBytes(tool, args, opts).then((out) => out.toString());
}

async function runToolJson<T>(tool: Tool, args: readonly string[], opts: IpOptions): Promise<T[]> {
  const text = (await runTool(tool, ['-json', ...args], opts)).trim();
  if (text === '') return [];
  return JSON.parse(text) as T[];
}

/** Runs `ip ARGS...` and resolves with stdout. */
export function ip(args: readonly string[], opts: IpOptions = {}): Promise<string> {
  return runTool('ip', args, opts);
}

/** Runs `ip` or `bridge` and resolves with its stdout as bytes (a digest needs no decoding). */
export async function toolBytes(tool: Tool, args: readonly string[], opts: IpOptions = {}): Promise<Buffer> {
  const full = [...baseArgs(opts), ...args];
  const r = await runProcessBytes([tool, ...full], { timeoutMs: opts.timeoutMs ?? IP_TIMEOUT_MS }).catch((err: unknown) => {
    throw new IpCommandError(tool === 'ip' ? full : [tool, ...full], (err as Error).message, null);
  });
  if (r.code !== 0 || r.timedOut) throw new IpCommandError(tool === 'ip' ? full : [tool, ...full], r.stderr, r.timedOut ? null : r.code, r.timedOut);
  return r.stdout;
}

/** Runs `bridge ARGS...` and resolves with stdout. */
export function bridge(args: readonly string[], opts: IpOptions = {}): Promise<string> {
  return runTool('bridge', args, opts);
}

/**
 * Parses a text dump line by line, handing the event loop back every `chunk` lines, so that a dump
 * of thousands of entries never holds it for long.
 */
export async function parseLines<T>(text: string, parse: (line: string) => T | null, chunk = 2000): Promise<T[]> {
  const out: T[] = [];
  let start = 0;
  for (let n = 1; start < text.length; n++) {
    let end = text.indexOf('\n', start);
    if (end === -1) end = text.length;
    const item = parse(text.slice(start, end));
    if (item !== null) out.push(item);
    start = end + 1;
    if (n % chunk === 0) await new Promise<void>((resolve) => setImmediate(resolve));
  }
  return out;
}

/** Runs `ip -json ARGS...` and parses the result (an empty output is an empty list). */
export function ipJson<T = unknown>(args: readonly string[], opts: IpOptions = {}): Promise<T[]> {
  return runToolJson<T>('ip', args, opts);
}

/** Runs `bridge -json ARGS...` (FDB dumps) and parses the result. */
export function bridgeJson<T = unknown>(args: readonly string[], opts: IpOptions = {}): Promise<T[]> {
  return runToolJson<T>('bridge', args, opts);
}

/**
 * Applies many commands in one `ip -batch` process. With `force`, ip carries on past failing lines
 * and the error lists them; the lines that succeeded stay applied.
 */
export function ipBatch(commands: readonly (readonly string[])[], opts: IpOptions & { force?: boolean } = {}): Promise<void> {
  return batch('ip', commands, opts);
}

/** `bridge -batch`: the same for FDB commands (`fdb replace ...`). */
export function bridgeBatch(commands: readonly (readonly string[])[], opts: IpOptions & { force?: boolean } = {}): Promise<void> {
  return batch('bridge', commands, opts);
}

/** What one `-force -batch` run did, line by line. */
export interface BatchOutcome {
  /** 0-based index of each refused line → iproute2's message for it. */
  failed: Map<number, string>;
  /**
   * Lines from this index on have an unknown outcome: the tool stopped early (it exits on a line it
   * cannot parse, even with -force). -1 when every line ran.
   */
  unknownFrom: number;
}

/**
 * Runs every command in one `-force -batch` process and reports which lines the kernel refused
 * (iproute2 prints its message, then "Command failed -:N"); never rejects for a refused line.
 */
export async function forceBatch(tool: Tool, commands: readonly (readonly string[])[], opts: IpOptions = {}): Promise<BatchOutcome> {
  if (commands.length === 0) return { failed: new Map(), unknownFrom: -1 };
  const args = [...baseArgs(opts), '-force', '-batch', '-'];
  const { code, stderr, timedOut } = await spawnBatch(tool, batchInput(commands), args, opts.timeoutMs ?? IP_TIMEOUT_MS);
  if (timedOut) throw new IpCommandError(tool === 'ip' ? args : [tool, ...args], stderr, code, true);
  return parseBatchErrors(stderr, code);
}

/** Attributes a `-force -batch` run's stderr to its lines: each message ends with "Command failed -:N". */
export function parseBatchErrors(stderr: string, code: number | null): BatchOutcome {
  const outcome: BatchOutcome = { failed: new Map(), unknownFrom: -1 };
  let message: string[] = [];
  let last = -1;
  for (const line of stderr.split('\n')) {
    const m = /^Command failed -:(\d+)$/.exec(line.trim());
    if (!m) {
      if (line.trim() !== '') message.push(line.trim());
      continue;
    }
    const index = Number(m[1]) - 1;
    outcome.failed.set(index, message.join('; ') || 'failed');
    last = Math.max(last, index);
    message = [];
  }
  // Text after the last attributed failure, with a failing exit, is a line that ended the batch.
  if (code !== 0 && (message.length > 0 || outcome.failed.size === 0)) outcome.unknownFrom = last + 1;
  return outcome;
}

function batchInput(commands: readonly (readonly string[])[]): string {
  return commands.map((c) => c.map(assertSafeWord).join(' ')).join('\n') + '\n';
}

async function spawnBatch(tool: Tool, input: string, args: string[], timeoutMs: number): Promise<{ code: number | null; stderr: string; timedOut: boolean }> {
  const r = await runProcessBytes([tool, ...args], { input, timeoutMs });
  return { code: r.code, stderr: r.stderr, timedOut: r.timedOut };
}

// async so that a refused word rejects the promise instead of throwing at the call site.
async function batch(tool: Tool, commands: readonly (readonly string[])[], opts: IpOptions & { force?: boolean }): Promise<void> {
  if (commands.length === 0) return;
  const args = [...baseArgs(opts), ...(opts.force ? ['-force'] : []), '-batch', '-'];
  const { code, stderr, timedOut } = await spawnBatch(tool, batchInput(commands), args, opts.timeoutMs ?? IP_TIMEOUT_MS);
  if (code !== 0 || timedOut) throw new IpCommandError(tool === 'ip' ? args : [tool, ...args], stderr, code, timedOut);
}
