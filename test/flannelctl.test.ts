// flannelctl against a real etcd: config get/set/validate and the lease table.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoPath } from '../testbed/cluster.js';
import { type EtcdServer, startEtcd } from '../testbed/etcd.js';
import { addLoneNodeNetns, delNetns, run, runId, waitFor } from '../testbed/netns.js';

const ctl = join(import.meta.dirname, '..', 'bin/flannelctl');
let etcd: EtcdServer;

beforeAll(async () => {
  etcd = await startEtcd();
});
afterAll(async () => {
  await etcd?.stop();
});

const flannelctl = (args: string[], input?: string) =>
  run([ctl, `--etcd-endpoints=${etcd.endpoint}`, ...args], { allowFail: true, ...(input !== undefined ? { input } : {}) });
const etcdctl = (...args: string[]) => run(['etcdctl', '--endpoints', etcd.endpoint, ...args], { env: { ETCDCTL_API: '3' } });

describe('flannelctl config', () => {
  it('refuses an invalid config, naming the field, and writes nothing', async () => {
    const res = await flannelctl(['config', 'set', '{"Network":"198.19.0.0/16","SubnetLen":31}']);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain('SubnetLen: must be /30 or shorter');
    expect((await etcdctl('get', '/coreos.com/network/config')).stdout).toBe('');
  });

  it('sets from stdin, gets it back verbatim, and validates with the effective defaults', async () => {
    const json = '{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}';
    expect((await flannelctl(['config', 'set', '-'], json)).code).toBe(0);
    expect((await flannelctl(['config', 'get'])).stdout).toBe(json + '\n');
    const v = await flannelctl(['config', 'validate']);
    expect(v.code).toBe(0);
    expect(v.stdout).toContain('"SubnetMin": "198.19.1.0"');
    expect(v.stdout).toContain('"SubnetMax": "198.19.255.0"');
    const bad = await flannelctl(['config', 'validate', '{"Network":"198.19.0.0/16","Backend":{"Type":"bogus"}}']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('Backend.Type: unknown backend "bogus"');
  });

  it('reports a missing config and an unreachable etcd clearly', async () => {
    const other = await run([ctl, '--etcd-endpoints', etcd.endpoint, '--etcd-prefix', '/nowhere', 'config', 'get'], { allowFail: true });
    expect(other.stderr).toContain('no config at /nowhere/config');
    const down = await run([ctl, '--etcd-endpoints', 'http://127.0.0.1:1', 'config', 'get'], { allowFail: true, timeoutMs: 20_000 });
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/flannelctl: /);
  }, 30_000);
});

describe('flannelctl leases', () => {
  it('lists leases with public IP, backend, VTEP MAC, expiry, and reservations', async () => {
    const grant = (await etcdctl('lease', 'grant', '3600')).stdout;
    const leaseId = /lease ([0-9a-f]+) granted/.exec(grant)![1]!;
    await etcdctl('put', '--lease', leaseId, '/coreos.com/network/subnets/198.19.22.0-24',
      '{"PublicIP":"198.18.0.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"f6:bd:17:d2:cf:1b"}}');
    await etcdctl('put', '/coreos.com/network/subnets/198.19.5.0-24', '{"PublicIP":"198.18.0.9","PublicIPv6":null}');
    await etcdctl('put', '/coreos.com/network/subnets/198.19.6.0-24', 'garbage');
    const res = await flannelctl(['leases']);
    expect(res.code).toBe(0);
    const lines = res.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^SUBNET\s+PUBLIC IP\s+BACKEND\s+VTEP MAC\s+EXPIRES$/);
    expect(lines[1]).toMatch(/^198\.19\.5\.0\/24\s+198\.18\.0\.9\s+udp\s+-\s+reserved$/);
    expect(lines[2]).toMatch(/^198\.19\.22\.0\/24\s+198\.18\.0\.2\s+vxlan\s+f6:bd:17:d2:cf:1b\s+\d{4}-\d\d-\d\dT[\d:]+Z \(in (59m\d\ds|1h00m)\)$/);
    expect(lines[3]).toMatch(/^198\.19\.6\.0\/24\s+-\s+INVALID\s+-\s+lease value is not JSON/);
    const json = JSON.parse((await flannelctl(['leases', '--json'])).stdout) as { leases: { subnet: string; reserved: boolean }[] };
    expect(json.leases.map((l) => [l.subnet, l.reserved])).toEqual([['198.19.22.0/24', false], ['198.19.5.0/24', true]]);
  });
});

describe('etcd authentication', () => {
  it('uses --etcd-username/--etcd-password, and says why it is refused without them', async () => {
    const secured = await startEtcd();
    try {
      const admin = (...args: string[]) => run(['etcdctl', '--endpoints', secured.endpoint, ...args], { env: { ETCDCTL_API: '3' } });
      await admin('user', 'add', 'root:rootpw');
      await admin('auth', 'enable');
      const withAuth = [ctl, `--etcd-endpoints=${secured.endpoint}`, '--etcd-username=root', '--etcd-password=rootpw'];
      expect((await run([...withAuth, 'config', 'set', '{"Network":"198.19.0.0/16"}'], { allowFail: true })).code).toBe(0);
      expect((await run([...withAuth, 'config', 'get'])).stdout.trim()).toBe('{"Network":"198.19.0.0/16"}');
      const anonymous = await run([ctl, `--etcd-endpoints=${secured.endpoint}`, 'config', 'get'], { allowFail: true });
      expect(anonymous.code).toBe(1);
      expect(anonymous.stderr).toMatch(/user name is empty|permission denied|not authenticated|authentication/i);
    } finally {
      await secured.stop();
    }
  }, 30_000);
});

describe('flannelctl config round trip and unknown keys', () => {
  const prefix = '/roundtrip/network';
  const ctlp = (args: string[], input?: string) => flannelctl([`--etcd-prefix=${prefix}`, ...args], input);

  it("validate prints upstream's keys, which set accepts and which read back as the same network", async () => {
    const v = await ctlp(['config', 'validate', '{"network":"198.19.0.0/16","backend":{"type":"vxlan","vni":3}}']);
    expect(v.code, v.stderr).toBe(0);
    const printed = JSON.parse(v.stdout) as Record<string, unknown>;
    expect(printed).toEqual({
      Network: '198.19.0.0/16', SubnetLen: 24, SubnetMin: '198.19.1.0', SubnetMax: '198.19.255.0',
      Backend: { Type: 'vxlan', VNI: 3, Port: 8472, GBP: false, DirectRouting: false },
    });
    const set = await ctlp(['config', 'set', '-'], v.stdout);
    expect(set.code, set.stderr).toBe(0);
    const again = await ctlp(['config', 'validate']);
    expect(JSON.parse(again.stdout)).toEqual(printed);
    expect(again.stderr).not.toContain('warning');
  });

  it('warns about an unknown key on validate, refuses it on set unless --force', async () => {
    const typo = '{"Network":"198.19.0.0/16","SubnetLenn":26}';
    const v = await ctlp(['config', 'validate', typo]);
    expect(v.code).toBe(0);
    expect(v.stderr).toContain('warning: unknown key "SubnetLenn"');
    const refused = await ctlp(['config', 'set', typo]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/unknown key "SubnetLenn".*--force/);
    expect((await ctlp(['config', 'get'])).stdout).not.toContain('SubnetLenn');
    expect((await ctlp(['config', 'set', '--force', typo])).code).toBe(0);
    expect((await ctlp(['config', 'get'])).stdout).toBe(typo + '\n');
  });

  it('ignores FLANNELD_* variables of daemon flags, and names every endpoint when etcd is unreachable', async () => {
    const withDaemonEnv = await run([ctl, `--etcd-endpoints=${etcd.endpoint}`, `--etcd-prefix=${prefix}`, 'config', 'get'], {
      allowFail: true, env: { FLANNELD_IFACE: 'eth0', FLANNELD_IP_MASQ: 'true', FLANNELD_BOGUS: 'x' },
    });
    expect(withDaemonEnv.code, withDaemonEnv.stderr).toBe(0);
    const down = await run([ctl, '--etcd-endpoints=http://127.0.0.1:1,http://127.0.0.1:2', 'leases'], { allowFail: true, timeoutMs: 20_000 });
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/^flannelctl: cannot reach etcd \(endpoints tried: http:\/\/127\.0\.0\.1:1, http:\/\/127\.0\.0\.1:2\): /);
  }, 30_000);
});

describe('flannelctl lease reserve, release, delete', () => {
  const prefix = '/admin/network';
  const ctla = (args: string[], input?: string) => flannelctl([`--etcd-prefix=${prefix}`, ...args], input);
  const key = (s: string) => `${prefix}/subnets/${s}`;
  /** The etcd lease ID a key is bound to (0: none, a reservation); null when the key is absent. */
  const leaseOf = async (k: string) => {
    const out = (await etcdctl('get', k, '-w', 'json')).stdout;
    if (!out.includes('"kvs"')) return null;
    // Lease IDs are int64: read them as text, not through JSON numbers.
    return BigInt(/"lease":(\d+)/.exec(out)?.[1] ?? '0');
  };

  beforeAll(async () => {
    await etcdctl('put', `${prefix}/config`, '{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}');
  });

  it('reserves a free subnet for a public IP, as a key with no TTL', async () => {
    const res = await ctla(['lease', 'reserve', '198.19.7.0/24', '198.18.0.7']);
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout).toBe('198.19.7.0/24 reserved for 198.18.0.7\n');
    expect((await etcdctl('get', key('198.19.7.0-24'), '--print-value-only')).stdout.trim()).toBe('{"PublicIP":"198.18.0.7","PublicIPv6":null}');
    expect(await leaseOf(key('198.19.7.0-24'))).toBe(0n);
    expect((await ctla(['lease', 'reserve', '198.19.7.0-24', '198.18.0.7'])).stdout).toContain('already reserved');
  });

  it("makes a node's lease permanent, keeping its value, and refuses another node's or a wrong subnet", async () => {
    const grant = (await etcdctl('lease', 'grant', '3600')).stdout;
    const leaseId = /lease ([0-9a-f]+) granted/.exec(grant)![1]!;
    const value = '{"PublicIP":"198.18.0.8","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"f6:bd:17:d2:cf:1b"}}';
    await etcdctl('put', '--lease', leaseId, key('198.19.8.0-24'), value);
    const other = await ctla(['lease', 'reserve', '198.19.8.0/24', '198.18.0.9']);
    expect(other.code).toBe(1);
    expect(other.stderr).toContain('198.19.8.0/24 is held by 198.18.0.8, not 198.18.0.9');
    const res = await ctla(['lease', 'reserve', '198.19.8.0/24', '198.18.0.8']);
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout).toContain('made permanent');
    expect((await etcdctl('get', key('198.19.8.0-24'), '--print-value-only')).stdout.trim()).toBe(value);
    expect(await leaseOf(key('198.19.8.0-24'))).toBe(0n);
    for (const [args, message] of [
      [['198.20.1.0/24', '198.18.0.1'], 'not inside the network 198.19.0.0/16'],
      [['198.19.9.0/25', '198.18.0.1'], 'not a /24 subnet'],
      [['198.19.9.7/24', '198.18.0.1'], 'is not a subnet'],
      [['198.19.9.0/24', 'nope'], 'is not an IPv4 address'],
    ] as const) {
      const bad = await ctla(['lease', 'reserve', ...args]);
      expect(bad.code).toBe(1);
      expect(bad.stderr).toContain(message);
    }
  });

  it('releases a reservation: the lease gets a TTL again', async () => {
    const res = await ctla(['lease', 'release', '198.19.8.0/24', '--ttl=600']);
    expect(res.code, res.stderr).toBe(0);
    const id = await leaseOf(key('198.19.8.0-24'));
    expect(id).not.toBe(0n);
    expect(id).not.toBeNull();
    const ttl = Number(/remaining\((\d+)s\)/.exec((await etcdctl('lease', 'timetolive', id!.toString(16))).stdout)![1]);
    expect(ttl).toBeGreaterThan(500);
    expect(ttl).toBeLessThanOrEqual(600);
    const again = await ctla(['lease', 'release', '198.19.8.0/24']);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('is not reserved');
  });

  it('deletes only after confirmation', async () => {
    const no = await ctla(['lease', 'delete', '198.19.7.0/24'], 'n\n');
    expect(no.code).toBe(1);
    expect(no.stderr).toMatch(/delete the lease of 198\.19\.7\.0\/24 \(public IP 198\.18\.0\.7, reserved\)\? .*\[y\/N\]/);
    expect(no.stderr).toContain('not deleted');
    expect(await leaseOf(key('198.19.7.0-24'))).toBe(0n);
    const empty = await ctla(['lease', 'delete', '198.19.7.0/24'], '');
    expect(empty.code).toBe(1);
    expect(await leaseOf(key('198.19.7.0-24'))).toBe(0n);
    const yes = await ctla(['lease', 'delete', '198.19.7.0/24'], 'y\n');
    expect(yes.code, yes.stderr).toBe(0);
    expect(await leaseOf(key('198.19.7.0-24'))).toBeNull();
    expect((await ctla(['lease', 'delete', '--yes', '198.19.8.0/24'])).code).toBe(0);
    expect(await leaseOf(key('198.19.8.0-24'))).toBeNull();
    const gone = await ctla(['lease', 'delete', '-y', '198.19.8.0/24']);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toContain('no lease for 198.19.8.0/24');
  });
});

describe('flannelctl status', () => {
  it("shows each node's lease and its /readyz where reachable, as a table and as JSON", async () => {
    const ns = `fl-${runId()}-ctlst`;
    const dir = mkdtempSync(join(tmpdir(), 'flannelctl-status-'));
    await addLoneNodeNetns(ns);
    let nsEtcd: EtcdServer | null = null;
    let daemon: ChildProcess | null = null;
    try {
      nsEtcd = await startEtcd({ netns: ns });
      const inNs = (args: string[]) => run([ctl, `--etcd-endpoints=${nsEtcd!.endpoint}`, ...args], { netns: ns, allowFail: true });
      expect((await inNs(['config', 'set', '{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}'])).code).toBe(0);
      // A node that is not running: reserved for 198.18.0.2, which nothing in the namespace answers for.
      expect((await inNs(['lease', 'reserve', '198.19.200.0/24', '198.18.0.2'])).code).toBe(0);
      daemon = spawn('ip', ['netns', 'exec', ns, repoPath('bin/flanneld'), `--etcd-endpoints=${nsEtcd.endpoint}`, '--iface=eth0',
        `--subnet-file=${join(dir, 'subnet.env')}`, `--cni-socket=${join(dir, 'cni.sock')}`, '--iptables-forward-rules=false', '--healthz-ip=198.18.0.1', '--healthz-port=18473'], { stdio: 'ignore' });
      expect(await waitFor(() => existsSync(join(dir, 'subnet.env')), 30_000)).toBe(true);
      const subnet = /FLANNEL_SUBNET=(198\.19\.\d+)\.1\/24/.exec(readFileSync(join(dir, 'subnet.env'), 'utf8'))![1]! + '.0/24';

      let table = '';
      expect(await waitFor(async () => {
        table = (await inNs(['status', '--healthz-port=18473', '--timeout=500'])).stdout;
        return table.includes(' ready');
      }, 15_000)).toBe(true);
      const lines = table.trim().split('\n');
      expect(lines[0]).toMatch(/^SUBNET\s+PUBLIC IP\s+BACKEND\s+LEASE\s+NODE$/);
      expect(lines.find((l) => l.startsWith(subnet))).toMatch(/198\.18\.0\.1\s+vxlan\s+expires in (23h59m|1d|24h00m)\s+ready$/);
      expect(lines.find((l) => l.startsWith('198.19.200.0/24'))).toMatch(/198\.18\.0\.2\s+udp\s+reserved\s+unreachable \(/);

      const json = JSON.parse((await inNs(['status', '--json', '--healthz-port=18473', '--timeout=500'])).stdout) as { nodes: { subnet: string; readiness: string; reserved: boolean }[] };
      expect(json.nodes.map((n) => [n.subnet, n.readiness, n.reserved]).sort()).toEqual([[subnet, 'ready', false], ['198.19.200.0/24', 'unreachable', true]].sort());
      const unprobed = JSON.parse((await inNs(['status', '--json'])).stdout) as { nodes: { readiness: string }[] };
      expect(unprobed.nodes.every((n) => n.readiness === 'not checked')).toBe(true);
    } finally {
      if (daemon && daemon.exitCode === null) {
        const exited = new Promise((r) => daemon!.once('exit', r));
        daemon.kill('SIGTERM');
        await exited;
      }
      await nsEtcd?.stop();
      await delNetns(ns);
      rmSync(dir, { recursive: true, force: true });
    }
  }, 90_000);
});
