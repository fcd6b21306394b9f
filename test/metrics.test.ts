// /metrics of the real daemon (udp backend) in a network namespace: Prometheus text format that
// Debian's promtool accepts, the udp data path's counters read at scrape time, and a real Prometheus
// server (also in the namespace, on loopback) that scrapes the daemon and sees the target up.
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type EtcdServer, startEtcd } from '../testbed/etcd.js';
import { addLoneNodeNetns, delNetns, run, runId, waitFor } from '../testbed/netns.js';

const repo = join(import.meta.dirname, '..');
const ns = `fl-${runId()}-metrics`;
const dir = mkdtempSync(join(tmpdir(), 'flannel-metrics-'));
const logFile = join(dir, 'flanneld.log');
const PORT = 18472;
const PROMETHEUS_PORT = 18490;
let etcd: EtcdServer;
const children = new Set<ChildProcess>();

function start(argv: string[], log: string): ChildProcess {
  const fd = openSync(log, 'a');
  const child = spawn('ip', ['netns', 'exec', ns, ...argv], { stdio: ['ignore', fd, fd] });
  closeSync(fd);
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

const curl = (url: string, ...args: string[]) => run(['curl', '-s', ...args, url], { netns: ns, allowFail: true });
const scrape = async () => (await curl(`http://127.0.0.1:${PORT}/metrics`)).stdout;

/** The value of one sample line, e.g. sample(text, 'flannel_udp_packets_total{direction="tx"}'). */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(series + ' '));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

beforeAll(async () => {
  await addLoneNodeNetns(ns);
  etcd = await startEtcd({ netns: ns });
  await run(['etcdctl', '--endpoints', etcd.endpoint, 'put', '/coreos.com/network/config', '{"network":"198.19.0.0/16","backend":{"type":"udp"},"SubnetLenn":26}'], {
    netns: ns, env: { ETCDCTL_API: '3' },
  });
  start([join(repo, 'bin/flanneld'), `--etcd-endpoints=${etcd.endpoint}`, '--iface=eth0', `--subnet-file=${join(dir, 'subnet.env')}`, `--cni-socket=${join(dir, 'cni.sock')}`,
    `--healthz-port=${PORT}`, '--iptables-forward-rules=false'], logFile);
  const ready = await waitFor(async () => (await curl(`http://127.0.0.1:${PORT}/readyz`)).stdout === 'ready\n', 30_000, 100);
  if (!ready) throw new Error(`daemon not ready:\n${existsSync(logFile) ? readFileSync(logFile, 'utf8').slice(-3000) : ''}`);
}, 90_000);

afterAll(async () => {
  for (const c of [...children]) await stop(c);
  await etcd?.stop();
  await delNetns(ns);
  rmSync(dir, { recursive: true, force: true });
});

describe('the config as upstream reads it', () => {
  it('lower-case keys are read, and a key upstream does not know is named once in a warning', () => {
    const lines = readFileSync(logFile, 'utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
    const warnings = lines.filter((l) => l['level'] === 'warn' && Array.isArray(l['unknownKeys']));
    expect(warnings.map((l) => l['unknownKeys'])).toEqual([['SubnetLenn']]);
    expect(lines.find((l) => l['msg'] === 'network config')).toMatchObject({ network: '198.19.0.0/16', subnetLen: 24, backend: 'udp' });
  });
});

describe('/metrics', () => {
  it('answers in the Prometheus text format, which promtool accepts', async () => {
    const head = await curl(`http://127.0.0.1:${PORT}/metrics`, '-o', '/dev/null', '-w', '%{content_type}');
    expect(head.stdout).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await scrape();
    const check = await run(['promtool', 'check', 'metrics'], { input: text, allowFail: true });
    expect(check.code, check.stdout + check.stderr).toBe(0);
    expect(check.stdout + check.stderr).toBe('');
  }, 30_000);

  it('has build info, readiness, our lease, the standard process metrics and the shared flannel_ metrics', async () => {
    const text = await scrape();
    const env = readFileSync(join(dir, 'subnet.env'), 'utf8');
    const subnet = /FLANNEL_SUBNET=(198\.19\.\d+)\.1\/24/.exec(env)![1]!;
    expect(text).toMatch(/^flannel_build_info\{version="\d+\.\d+\.\d+",nodejs_version="v\d+[^"]*"\} 1$/m);
    expect(sample(text, 'flannel_ready')).toBe(1);
    expect(sample(text, `flannel_subnet_info{subnet="${subnet}.0/24",network="198.19.0.0/16",backend="udp",public_ip="198.18.0.1"}`)).toBe(1);
    const expiry = sample(text, 'flannel_lease_expiry_timestamp_seconds')!;
    expect(expiry - Date.now() / 1000).toBeGreaterThan(86_000);
    expect(sample(text, 'process_resident_memory_bytes')).toBeGreaterThan(10e6);
    expect(text).toMatch(/^nodejs_heap_size_used_bytes \d+/m);
    for (const name of ['flannel_lease_claims_total', 'flannel_etcd_up', 'flannel_kernel_programming_duration_seconds', 'flannel_leases_invalid_total']) {
      expect(text).toContain(`# TYPE ${name} `);
    }
  }, 30_000);

  it('counts the udp data path at scrape time: packets to a subnet nobody holds are dropped with a reason', async () => {
    const before = await scrape();
    expect(sample(before, 'flannel_udp_packets_total{direction="tx"}')).toBeGreaterThanOrEqual(0);
    expect(sample(before, 'flannel_udp_bytes_total{direction="rx"}')).toBeGreaterThanOrEqual(0);
    const dropped = () => sample(before, 'flannel_udp_dropped_packets_total{reason="no_route"}') ?? 0;
    const was = dropped();
    // 198.19.250.1 is inside the network (routed into flannel0) but in no lease.
    await run(['ping', '-c', '2', '-i', '0.2', '-W', '1', '198.19.250.1'], { netns: ns, allowFail: true });
    let after = '';
    expect(await waitFor(async () => {
      after = await scrape();
      return (sample(after, 'flannel_udp_dropped_packets_total{reason="no_route"}') ?? 0) >= was + 2;
    }, 10_000, 100)).toBe(true);
    expect(sample(after, 'flannel_udp_icmp_unreachable_sent_total')).toBeGreaterThanOrEqual(1);
  }, 30_000);

  it('is scraped by a real Prometheus server, which reports the target up and reads flannel_ready', async () => {
    const config = join(dir, 'prometheus.yml');
    writeFileSync(config, [
      'global: { scrape_interval: 1s, scrape_timeout: 1s }',
      'scrape_configs:',
      '  - job_name: flanneld',
      `    static_configs: [{ targets: ["127.0.0.1:${PORT}"] }]`,
      '',
    ].join('\n'));
    const prometheus = start(['prometheus', `--config.file=${config}`, `--storage.tsdb.path=${join(dir, 'tsdb')}`,
      `--web.listen-address=127.0.0.1:${PROMETHEUS_PORT}`, '--log.level=warn'], join(dir, 'prometheus.log'));
    try {
      const api = `http://127.0.0.1:${PROMETHEUS_PORT}/api/v1`;
      let targets: { health: string; lastError: string }[] = [];
      const up = await waitFor(async () => {
        const res = await curl(`${api}/targets`);
        if (res.code !== 0 || !res.stdout.startsWith('{')) return false;
        targets = (JSON.parse(res.stdout) as { data: { activeTargets: { health: string; lastError: string }[] } }).data.activeTargets;
        return targets.length === 1 && targets[0]!.health === 'up';
      }, 60_000, 250);
      expect(up, `targets: ${JSON.stringify(targets)}\n${existsSync(join(dir, 'prometheus.log')) ? readFileSync(join(dir, 'prometheus.log'), 'utf8').slice(-2000) : ''}`).toBe(true);
      let value = '';
      expect(await waitFor(async () => {
        const res = await curl(`${api}/query?query=flannel_ready`);
        const result = res.code === 0 && res.stdout.startsWith('{') ? (JSON.parse(res.stdout) as { data: { result: { value: [number, string] }[] } }).data.result : [];
        value = result[0]?.value[1] ?? '';
        return value !== '';
      }, 30_000, 250)).toBe(true);
      expect(value).toBe('1');
    } finally {
      await stop(prometheus);
    }
  }, 120_000);
});
