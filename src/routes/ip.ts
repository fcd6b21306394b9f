// Runs iproute2 (`ip`, and `bridge` for the vxlan FDB). Arguments are passed as an argv array (never through a shell), so lease data
// from etcd can never be interpreted as shell syntax. Batches go through `ip -batch -` on stdin.
import { execFile, spawn } from 'node:child_process';

export class IpCommandError extends Error {
  constructor(
    readonly args: readonly string[],
    readonly stderr: string,
    readonly code: number | null,
  ) {
    super(`ip ${args.join(' ')} failed (exit ${code}): ${stderr.trim()}`);
    this.name = 'IpCommandError';
  }
}

export interface IpOptions {
  /** Run inside this named network namespace (ip -n NAME); default: the caller's own. */
  netns?: string;
}

function baseArgs(opts: IpOptions): string[] {
  return opts.netns ? ['-n', opts.netns] : [];
}

type Tool = 'ip' | 'bridge';

function runTool(tool: Tool, args: readonly string[], opts: IpOptions): Promise<string> {
  const full = [...baseArgs(opts), ...args];
  return new Promise((resolve, reject) => {
    execFile(tool, full, { maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new IpCommandError(tool === 'ip' ? full : [tool, ...full], String(stderr), typeof err.code === 'number' ? err.code : null));
      else resolve(String(stdout));
    });
  });
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

/** Runs `ip -json ARGS...` and parses the result (an empty output is an empty list). */
export function ipJson<T = unknown>(args: readonly string[], opts: IpOptions = {}): Promise<T[]> {
  return runToolJson<T>('ip', args, opts);
}

/** Runs `bridge -json ARGS...` (FDB dumps) and parses the result. */
export function bridgeJson<T = unknown>(args: readonly string[], opts: IpOptions = {}): Promise<T[]> {
  return runToolJson<T>('bridge', args, opts);
}

/** Quotes one batch word for `ip -batch`, which splits lines on whitespace and honours double quotes. */
function batchWord(word: string): string {
  if (/[\s"\\]/.test(word) || word === '') {
    if (/["\\\n]/.test(word)) throw new Error(`refusing to pass ${JSON.stringify(word)} to ip -batch`);
    return `"${word}"`;
  }
  return word;
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

// async so that a refused word rejects the promise instead of throwing at the call site.
async function batch(tool: Tool, commands: readonly (readonly string[])[], opts: IpOptions & { force?: boolean }): Promise<void> {
  if (commands.length === 0) return;
  const args = [...baseArgs(opts), ...(opts.force ? ['-force'] : []), '-batch', '-'];
  const input = commands.map((c) => c.map(batchWord).join(' ')).join('\n') + '\n';
  return new Promise((resolve, reject) => {
    const child = spawn(tool, args, { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new IpCommandError(tool === 'ip' ? args : [tool, ...args], stderr, code))));
    child.stdin.end(input);
  });
}
