// Runs iproute2. Arguments are passed as an argv array (never through a shell), so lease data
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

/** Runs `ip ARGS...` and resolves with stdout. */
export function ip(args: readonly string[], opts: IpOptions = {}): Promise<string> {
  const full = [...baseArgs(opts), ...args];
  return new Promise((resolve, reject) => {
    execFile('ip', full, { maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new IpCommandError(full, String(stderr), typeof err.code === 'number' ? err.code : null));
      else resolve(String(stdout));
    });
  });
}

/** Runs `ip -json ARGS...` and parses the result (an empty output is an empty list). */
export async function ipJson<T = unknown>(args: readonly string[], opts: IpOptions = {}): Promise<T[]> {
  const out = await ip(['-json', ...args], opts);
  const text = out.trim();
  if (text === '') return [];
  return JSON.parse(text) as T[];
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
  if (commands.length === 0) return Promise.resolve();
  const args = [...baseArgs(opts), ...(opts.force ? ['-force'] : []), '-batch', '-'];
  const input = commands.map((c) => c.map(batchWord).join(' ')).join('\n') + '\n';
  return new Promise((resolve, reject) => {
    const child = spawn('ip', args, { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new IpCommandError(args, stderr, code))));
    child.stdin.end(input);
  });
}
