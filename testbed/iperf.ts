// Pod → pod figures for the throughput benches: iperf3 TCP throughput and ping round-trip time, each run
// from one namespace to an address served in another.
import { spawn } from 'node:child_process';
import { run } from './netns.js';

/** iperf3 TCP for `seconds` (the first one omitted) from `fromNs` to `dst`, served in `toNs`; Mbit/s as received. */
export async function iperfMbps(fromNs: string, toNs: string, dst: string, seconds: number): Promise<number> {
  const server = spawn('ip', ['netns', 'exec', toNs, 'iperf3', '-s', '-1', '--forceflush', '-B', dst], { stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    await new Promise<void>((resolve, reject) => {
      server.stdout.on('data', (d: Buffer) => d.toString().includes('Server listening') && resolve());
      server.once('exit', (code) => reject(new Error(`iperf3 server exited ${code}`)));
    });
    const res = await run(['iperf3', '-c', dst, '-t', String(seconds), '-O', '1', '-J'], { netns: fromNs, timeoutMs: (seconds + 20) * 1000 });
    const report = JSON.parse(res.stdout) as { end: { sum_received: { bits_per_second: number } } };
    return report.end.sum_received.bits_per_second / 1e6;
  } finally {
    server.kill('SIGKILL');
  }
}

/** `count` echoes 50 ms apart from `fromNs` to `dst`; the mean round trip in ms (rejects when any is lost). */
export async function pingRttMs(fromNs: string, dst: string, count: number): Promise<number> {
  const res = await run(['ping', '-n', '-q', '-c', String(count), '-i', '0.05', '-W', '2', dst], { netns: fromNs, timeoutMs: (count * 0.05 + 10) * 1000 });
  const m = /= [\d.]+\/([\d.]+)\//.exec(res.stdout);
  if (!m) throw new Error(`no round-trip summary from ping: ${res.stdout.slice(-300)}`);
  return Number(m[1]);
}
