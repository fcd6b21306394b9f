// flannelctl against a real etcd: config get/set/validate and the lease table.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type EtcdServer, startEtcd } from './harness/etcd.js';
import { run } from './harness/netns.js';

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
