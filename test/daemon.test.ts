// The real daemon (./bin/flanneld) in a network namespace against a real etcd: env file, upstream
// lease format, restart keeping its subnet, waiting out a bad config, health endpoints, env flags.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type EtcdServer, startEtcd } from '../testbed/etcd.js';
import { addLoneNodeNetns, delNetns, run, runId, waitFor } from '../testbed/netns.js';

const repo = join(import.meta.dirname, '..');
const ns = `fl-${runId()}-daemon`;
const dir = mkdtempSync(join(tmpdir(), 'flannel-daemon-'));
const subnetFile = join(dir, 'subnet.env');
const logFile = join(dir, 'flanneld.log');
let etcd: EtcdServer;
const daemons = new Set<ChildProcess>();

async function etcdctl(...args: string[]): Promise<string> {
  return (await run(['etcdctl', '--endpoints', etcd.endpoint, ...args], { netns: ns, env: { ETCDCTL_API: '3' } })).stdout;
}

let daemonsStarted = 0;

function startDaemon(args: string[] = [], env: Record<string, string> = {}): ChildProcess {
  const fd = openSync(logFile, 'a');
  // Each daemon its own CNI socket, never the host's /run/flannel/cni.sock.
  const cniSocket = `--cni-socket=${join(dir, `cni-${++daemonsStarted}.sock`)}`;
  const child = spawn('ip', ['netns', 'exec', ns, join(repo, 'bin/flanneld'), `--etcd-endpoints=${etcd.endpoint}`, cniSocket, ...args], {
    stdio: ['ignore', fd, fd],
    env: { ...process.env, ...env },
  });
  closeSync(fd);
  daemons.add(child);
  child.on('exit', () => daemons.delete(child));
  return child;
}

async function stopDaemon(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  child.kill(signal);
  return exited;
}

function log(): string {
  return existsSync(logFile) ? readFileSync(logFile, 'utf8') : '';
}

async function waitForFile(path: string, timeoutMs = 20_000): Promise<void> {
  if (!(await waitFor(() => existsSync(path), timeoutMs, 20))) throw new Error(`${path} not written; daemon log:\n${log().slice(-3000)}`);
}

beforeAll(async () => {
  // An underlay interface eth0 (198.18.0.1) to tunnel from.
  await addLoneNodeNetns(ns);
  etcd = await startEtcd({ netns: ns });
}, 60_000);

afterAll(async () => {
  for (const d of daemons) await stopDaemon(d, 'SIGKILL');
  await etcd?.stop();
  await delNetns(ns);
  rmSync(dir, { recursive: true, force: true });
});

describe('flanneld in a network namespace', () => {
  it('waits for a valid config, naming the bad field once, then leases a subnet and writes the env file', async () => {
    const daemon = startDaemon(['--iface=eth0', `--subnet-file=${subnetFile}`, '--healthz-port=18471', '--iptables-forward-rules=false']);
    expect(await waitFor(() => log().includes('no network config in etcd'), 15_000)).toBe(true);
    await etcdctl('put', '/coreos.com/network/config', '{"Network":"198.19.0.0/16","SubnetMin":"198.19.9.7","Backend":{"Type":"vxlan"}}');
    expect(await waitFor(() => log().includes('"field":"SubnetMin"'), 15_000)).toBe(true);
    // /readyz says not ready while waiting; /healthz says alive.
    expect((await run(['curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', 'http://127.0.0.1:18471/readyz'], { netns: ns, allowFail: true })).stdout).toBe('503');
    expect((await run(['curl', '-s', 'http://127.0.0.1:18471/healthz'], { netns: ns })).stdout).toBe('ok\n');
    await new Promise((r) => setTimeout(r, 1500)); // the daemon keeps waiting without repeating itself
    expect(log().match(/"field":"SubnetMin"/g)).toHaveLength(1);
    expect(existsSync(subnetFile)).toBe(false);
    expect(daemon.exitCode).toBeNull();

    await etcdctl('put', '/coreos.com/network/config', '{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}');
    await waitForFile(subnetFile);
    const env = readFileSync(subnetFile, 'utf8');
    expect(env).toMatch(/^FLANNEL_NETWORK=198\.19\.0\.0\/16\nFLANNEL_SUBNET=198\.19\.\d+\.1\/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n$/);
    expect(await waitFor(async () => (await run(['curl', '-s', 'http://127.0.0.1:18471/readyz'], { netns: ns, allowFail: true })).stdout === 'ready\n', 5000)).toBe(true);

    // The lease is in upstream's JSON, bound to a 24 h etcd lease, and names this node's device MAC.
    const subnet = /FLANNEL_SUBNET=(198\.19\.\d+)\.1\/24/.exec(env)![1]!;
    const key = `/coreos.com/network/subnets/${subnet}.0-24`;
    const value = (await etcdctl('get', key, '--print-value-only')).trim();
    const mac = JSON.parse((await run(['ip', '-json', 'link', 'show', 'flannel.1'], { netns: ns })).stdout)[0].address as string;
    // ... and this node's identity, kept beside the env file (upstream's decoders ignore the extra field).
    const identity = readFileSync(join(dirname(subnetFile), 'node-identity'), 'utf8').trim();
    expect(identity).toMatch(/^[0-9a-f]{32}$/);
    expect(value).toBe(`{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"${mac}"},"NodeIdentity":"${identity}"}`);
    const leaseHex = BigInt(/"lease":(\d+)/.exec(await etcdctl('get', key, '-w', 'json'))![1]!).toString(16);
    const ttl = Number(/granted with TTL\((\d+)s\)/.exec(await etcdctl('lease', 'timetolive', leaseHex))![1]);
    expect(ttl).toBe(86400);
    const metrics = (await run(['curl', '-s', 'http://127.0.0.1:18471/metrics'], { netns: ns })).stdout;
    expect(/^flannel_subnet_info\{subnet="([^"]+)"/m.exec(metrics)?.[1]).toBe(`${subnet}.0/24`);

    // SIGTERM stops cleanly and keeps the lease, as upstream does.
    expect(await stopDaemon(daemon)).toBe(0);
    expect((await etcdctl('get', key, '--print-value-only')).trim()).toBe(value);
  }, 90_000);

  it('keeps its subnet across restarts: clean stop, SIGKILL, and a lost env file', async () => {
    const before = readFileSync(subnetFile, 'utf8');
    for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
      unlinkSync(subnetFile);
      const started = Date.now();
      const d = startDaemon(['--iface=eth0', `--subnet-file=${subnetFile}`, '--iptables-forward-rules=false']);
      await waitForFile(subnetFile);
      console.log(`daemon start → env file written: ${Date.now() - started} ms`);
      expect(readFileSync(subnetFile, 'utf8')).toBe(before);
      await stopDaemon(d, signal);
    }
    // With the key gone too (expired while the node was down), the env file still brings it back.
    const subnet = /FLANNEL_SUBNET=(198\.19\.\d+)\.1\/24/.exec(before)![1]!;
    await etcdctl('del', `/coreos.com/network/subnets/${subnet}.0-24`);
    const d = startDaemon(['--iface=eth0', `--subnet-file=${subnetFile}`, '--iptables-forward-rules=false']);
    expect(await waitFor(() => log().includes('claimed our previous subnet'), 20_000)).toBe(true);
    expect(readFileSync(subnetFile, 'utf8')).toBe(before);
    await stopDaemon(d);
  }, 90_000);

  it('with --ip-blackhole-route, installs a blackhole route for its subnet and keeps it there', async () => {
    const subnet = /FLANNEL_SUBNET=(198\.19\.\d+)\.1\/24/.exec(readFileSync(subnetFile, 'utf8'))![1]!;
    const blackholes = async () => (await run(['ip', '-4', 'route', 'show', 'type', 'blackhole'], { netns: ns })).stdout;
    expect(await blackholes()).not.toContain(`${subnet}.0/24`);
    const d = startDaemon(['--iface=eth0', `--subnet-file=${subnetFile}`, '--iptables-forward-rules=false', '--ip-blackhole-route']);
    expect(await waitFor(async () => (await blackholes()).includes(`blackhole ${subnet}.0/24`), 20_000), log().slice(-3000)).toBe(true);
    // Deleted behind the daemon's back, it comes back with the next resync.
    await run(['ip', 'route', 'del', 'blackhole', `${subnet}.0/24`], { netns: ns });
    expect(await waitFor(async () => (await blackholes()).includes(`blackhole ${subnet}.0/24`), 20_000), log().slice(-3000)).toBe(true);
    await stopDaemon(d);
    await run(['ip', 'route', 'del', 'blackhole', `${subnet}.0/24`], { netns: ns });
  }, 60_000);

  it("reads every flag from FLANNELD_* environment variables, and runs with the Kubernetes DaemonSet's FLANNELD_NET_CONFIG_PATH, warning once", async () => {
    const envFile = join(dir, 'from-env.env');
    const before = log().length;
    const d = startDaemon([], {
      FLANNELD_IFACE: '198.18.0.1',
      FLANNELD_SUBNET_FILE: envFile,
      FLANNELD_IPTABLES_FORWARD_RULES: 'false',
      FLANNELD_IP_MASQ: 'true',
      FLANNELD_PUBLIC_IP: '198.18.0.1',
      FLANNELD_NET_CONFIG_PATH: '/etc/kube-flannel/net-conf.json',
    });
    await waitForFile(envFile);
    expect(readFileSync(envFile, 'utf8')).toContain('FLANNEL_IPMASQ=true');
    expect(log().slice(before).match(/ignoring --net-config-path: in etcd mode the network config is read from etcd/g)).toHaveLength(1);
    expect(d.exitCode).toBeNull();
    await stopDaemon(d);
  }, 60_000);

  it('keeps its iptables rules after a clean stop unless --iptables-cleanup asks to remove them', async () => {
    const rules = async () => (await run(['iptables-save'], { netns: ns })).stdout;
    await etcdctl('put', '/coreos.com/network/config', '{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}');
    for (const cleanup of [false, true]) {
      const d = startDaemon(['--iface=eth0', `--subnet-file=${join(dir, 'ipt.env')}`, '--ip-masq', `--iptables-cleanup=${cleanup}`]);
      await waitForFile(join(dir, 'ipt.env'));
      expect(await waitFor(async () => /-A FLANNEL-POSTRTG .*MASQUERADE/.test(await rules()) && /-A FLANNEL-FWD -s 198\.19\.0\.0\/16/.test(await rules()), 10_000)).toBe(true);
      expect(await stopDaemon(d)).toBe(0);
      const after = await rules();
      expect(after.includes('FLANNEL-POSTRTG'), `cleanup=${cleanup}: ${log().slice(-1500)}`).toBe(!cleanup);
      expect(after.includes('FLANNEL-FWD'), `cleanup=${cleanup}`).toBe(!cleanup);
      unlinkSync(join(dir, 'ipt.env'));
    }
  }, 60_000);

  it('chooses the underlay interface by --iface-regex and by --iface-can-reach', async () => {
    for (const [flag, envFile] of [['--iface-regex=^eth[0-9]$', 'regex.env'], ['--iface-can-reach=198.18.0.77', 'reach.env']] as const) {
      const before = log().length;
      const d = startDaemon([flag, `--subnet-file=${join(dir, envFile)}`, '--iptables-forward-rules=false']);
      await waitForFile(join(dir, envFile));
      expect(log().slice(before)).toMatch(/"iface":"eth0","ifaceIP":"198\.18\.0\.1","publicIP":"198\.18\.0\.1"/);
      await stopDaemon(d);
    }
  }, 60_000);

  it('says clearly that the network is full, and keeps running', async () => {
    const prefix = '/full-network';
    await etcdctl('put', `${prefix}/config`, '{"Network":"198.19.0.0/26","Backend":{"Type":"vxlan"}}');
    for (const sn of ['198.19.0.16-28', '198.19.0.32-28', '198.19.0.48-28']) {
      await etcdctl('put', `${prefix}/subnets/${sn}`, '{"PublicIP":"198.18.0.99","PublicIPv6":null}');
    }
    const d = startDaemon(['--iface=eth0', `--etcd-prefix=${prefix}`, `--subnet-file=${join(dir, 'full.env')}`, '--iptables-forward-rules=false']);
    expect(await waitFor(() => log().includes('no free subnet: all 3 /28 subnets between 198.19.0.16 and 198.19.0.48'), 15_000)).toBe(true);
    expect(d.exitCode).toBeNull();
    expect(await stopDaemon(d)).toBe(0);
  }, 30_000);

  it('rejects a bad flag with a clear message and exit code', async () => {
    const res = await run([join(repo, 'bin/flanneld'), '--iface-regex=(', '--etcd-endpoints=http://127.0.0.1:1'], { allowFail: true });
    expect(res.code).not.toBe(0);
    expect(res.stderr).toMatch(/--iface-regex "\(":/);
    const version = await run([join(repo, 'bin/flanneld'), '--version']);
    expect(version.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
    // Go-style single-dash flags, as in upstream's docs, are accepted.
    const bad = await run([join(repo, 'bin/flanneld'), '-iface=nonexistent0', '-etcd-endpoints=http://127.0.0.1:1'], { allowFail: true, netns: ns });
    expect(bad.stderr).toMatch(/--iface: none of nonexistent0/);
  });
});
