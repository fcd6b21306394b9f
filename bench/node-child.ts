// How the memory benches measure a fresh process: run an ES module script with `node --expose-gc`
// (plus the case's node flags and environment) and read the JSON object it prints as its last line.
import { spawn } from 'node:child_process';
import { repoRoot } from '../testbed/cluster.js';

export function runNodeScript<T>(label: string, script: string, nodeFlags: readonly string[], env: Record<string, string>): Promise<T> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--expose-gc', ...nodeFlags, '--input-type=module', '-e', script], {
      cwd: repoRoot(),
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) return reject(new Error(`${label}: node exited ${code}: ${err.slice(-1500)}`));
      try {
        resolve(JSON.parse(out.trim().split('\n').pop()!) as T);
      } catch {
        reject(new Error(`${label}: unreadable output: ${out.slice(-500)} ${err.slice(-500)}`));
      }
    });
  });
}
