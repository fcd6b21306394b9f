// The lease manager against a real etcd server: claiming, races (also two keys naming one IPv6
// subnet, and two nodes given one PublicIP), reuse, reservations, renewal, loss and re-claim, and watch continuity across an etcd restart.
import { spawnSync } from 'node:child_process';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../src/common/log.js';
import { EtcdRegistry } from '../src/etcd/registry.js';
import { parseNetworkConfig } from '../src/subnet/config.js';
import { Ip4Net } from '../src/common/ip4.js';
import { Ip6Net } from '../src/common/ip6.js';
import type { Lease, LeaseEvent } from '../src/subnet/lease.js';
import { LeaseManager, type LeaseManagerOptions, NetworkFullError, PublicIpInUseError } from '../src/subnet/manager.js';
import { type EtcdServer, startEtcd } from '../testbed/etcd.js';
import { ListingGate } from './harness/listing-gate.js';

const PREFIX = '/coreos.com/network';
let etcd: EtcdServer;
let prefixCounter = 0;
const cleanups: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  etcd = await startEtcd();
});
afterAll(async () => {
  await etcd.stop();
});
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

function etcdctl(...args: string[]): string {
  const res = spawnSync('etcdctl', ['--endpoints', etcd.endpoint, ...args], { env: { ...process.env, ETCDCTL_API: '3' }, encoding: 'utf8' });
  if (res.status !== 0) throw new Error(`etcdctl ${args.join(' ')}: ${res.stderr}`);
  return res.stdout;
}

/** Each test gets its own prefix so leftovers of one never disturb another. */
function freshPrefix(): string {
  return `${PREFIX}-t${process.pid}-${prefixCounter++}`;
}

function registry(prefix: string): EtcdRegistry {
  const r = new EtcdRegistry({ endpoints: [etcd.endpoint], prefix }, silentLogger);
  cleanups.push(() => r.close());
  return r;
}

class Recorder {
  own: Lease[] = [];
  changes: ('claimed' | 'moved')[] = [];
  events: LeaseEvent[] = [];
  batches = 0;
  remote = new Map<string, Lease>();
  listener = {
    onOwnLease: async (lease: Lease, change: 'claimed' | 'moved') => {
      this.own.push(lease);
      this.changes.push(change);
    },
    onLeaseEvents: async (events: LeaseEvent[]) => {
      this.batches++;
      for (const e of events) {
        this.events.push(e);
        if (e.type === 'added') this.remote.set(e.lease.subnet.toKey(), e.lease);
        else this.remote.delete(e.lease.subnet.toKey());
      }
    },
  };
}

function manager(prefix: string, publicIP: string, overrides: Partial<LeaseManagerOptions> = {}, config = '{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}') {
  const m = new LeaseManager({
    store: registry(prefix),
    network: parseNetworkConfig(config),
    // Each node's own VTEP MAC (two leases with one MAC are refused), from its address's last octet.
    attrs: { publicIP, publicIPv6: null, backend: { type: 'vxlan', vtep: { vni: 1, mac: `02:00:00:00:00:${Number(publicIP.split('.')[3]).toString(16).padStart(2, '0')}` }, vtepV6: null } },
    ttlSeconds: 3600,
    renewMarginSeconds: 60,
    previousSubnet: null,
    log: silentLogger,
    ...overrides,
  });
  cleanups.push(() => m.stop());
  return m;
}

async function until(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('claiming subnets', () => {
  it('20 nodes claiming at once get 20 distinct subnets, each bound to an etcd lease', async () => {
    const prefix = freshPrefix();
    // A small network (30 subnets) makes collisions between the 20 random picks likely.
    const config = '{"Network":"198.19.0.0/22","SubnetLen":27,"Backend":{"Type":"vxlan"}}';
    const nodes = Array.from({ length: 20 }, (_, i) => manager(prefix, `198.18.0.${i + 1}`, {}, config));
    const leases = await Promise.all(nodes.map((m) => m.start(new Recorder().listener)));
    const subnets = leases.map((l) => l.subnet.toString());
    expect(new Set(subnets).size).toBe(20);
    const keys = etcdctl('get', '--prefix', `${prefix}/subnets/`, '--keys-only').split('\n').filter((l) => l !== '');
    expect(keys).toHaveLength(20);
    const withLease = JSON.parse(etcdctl('get', '--prefix', `${prefix}/subnets/`, '-w', 'json')) as { kvs: { lease?: number }[] };
    expect(withLease.kvs.every((kv) => (kv.lease ?? 0) !== 0)).toBe(true);
  });

  it('writes the lease in upstream JSON', async () => {
    const prefix = freshPrefix();
    const lease = await manager(prefix, '198.18.0.7', {
      attrs: { publicIP: '198.18.0.7', publicIPv6: null, backend: { type: 'vxlan', vtep: { vni: 1, mac: '02:00:00:00:00:01' }, vtepV6: null } },
    }).start(new Recorder().listener);
    const value = etcdctl('get', `${prefix}/subnets/${lease.subnet.toKey()}`, '--print-value-only').trim();
    expect(value).toBe('{"PublicIP":"198.18.0.7","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}');
  });

  it('a full network gives a clear error', async () => {
    const prefix = freshPrefix();
    const config = '{"Network":"198.19.0.0/26","Backend":{"Type":"vxlan"}}'; // three /28 subnets
    for (let i = 1; i <= 3; i++) await manager(prefix, `198.18.0.${i}`, {}, config).start(new Recorder().listener);
    const err = await manager(prefix, '198.18.0.9', {}, config).start(new Recorder().listener).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NetworkFullError);
    expect((err as Error).message).toMatch(/no free subnet: all 3 \/28 subnets between 198\.19\.0\.16 and 198\.19\.0\.48/);
  });

  it('honours reservations: a key with no etcd lease is never taken, and never expires', async () => {
    const prefix = freshPrefix();
    const config = '{"Network":"198.19.0.0/26","Backend":{"Type":"vxlan"}}';
    etcdctl('put', `${prefix}/subnets/198.19.0.16-28`, '{"PublicIP":"198.18.0.200","PublicIPv6":null}');
    etcdctl('put', `${prefix}/subnets/198.19.0.32-28`, '{"PublicIP":"198.18.0.201","PublicIPv6":null}');
    const lease = await manager(prefix, '198.18.0.1', {}, config).start(new Recorder().listener);
    expect(lease.subnet.toString()).toBe('198.19.0.48/28');
    // The node whose PublicIP a reservation carries gets it, and it stays a reservation.
    const reserved = await manager(prefix, '198.18.0.200', {}, config).start(new Recorder().listener);
    expect(reserved.subnet.toString()).toBe('198.19.0.16/28');
    expect(reserved.expiration).toBeNull();
    const kv = JSON.parse(etcdctl('get', `${prefix}/subnets/198.19.0.16-28`, '-w', 'json')) as { kvs: { lease?: number }[] };
    expect(kv.kvs[0]!.lease ?? 0).toBe(0);
  });
});

describe('two keys naming one IPv6 subnet', () => {
  it('four dual-stack nodes choosing together all pick one IPv6 subnet: the oldest key keeps it, the three others give way before writing an env file', async () => {
    const prefix = freshPrefix();
    const config = '{"Network":"198.19.0.0/16","EnableIPv6":true,"IPv6Network":"2001:2:1::/48","Backend":{"Type":"host-gw"}}';
    const contested = Ip6Net.parse('2001:2:1:77::/64');
    // Each lists before any creates (the gate), and each prefers the same IPv6 subnet (its env file's).
    const gate = new ListingGate(4);
    const recs = Array.from({ length: 4 }, () => new Recorder());
    const nodes = recs.map((_, k) => {
      const store = registry(prefix);
      gate.hold(store);
      return manager(prefix, `198.18.0.${k + 1}`, {
        store,
        attrs: { publicIP: `198.18.0.${k + 1}`, publicIPv6: `2001:2::${k + 1}`, backend: { type: 'host-gw' } },
        previousSubnet: Ip4Net.parse(`198.19.${k + 1}.0/24`),
        previousIpv6Subnet: contested,
      }, config);
    });
    const leases = await Promise.all(nodes.map((m, k) => m.start(recs[k]!.listener)));
    expect(leases.map((l) => l.subnet.toString())).toEqual(['198.19.1.0/24', '198.19.2.0/24', '198.19.3.0/24', '198.19.4.0/24']);
    expect(new Set(leases.map((l) => l.ipv6Subnet!.toString())).size).toBe(4);
    expect(leases.filter((l) => l.ipv6Subnet!.equals(contested))).toHaveLength(1);
    const gaveWay = nodes.map((m) => m.stats()['gaveWay']!);
    expect(gaveWay.reduce((a, b) => a + b)).toBeGreaterThanOrEqual(3);
    expect(gaveWay[leases.findIndex((l) => l.ipv6Subnet!.equals(contested))]).toBe(0);
    for (const r of recs) expect(r.changes).toEqual(['claimed']);
    // etcd holds the four keys the nodes hold, nothing else.
    const keys = etcdctl('get', '--prefix', `${prefix}/subnets/`, '--keys-only').split('\n').filter((l) => l !== '').sort();
    expect(keys).toEqual(leases.map((l) => `${prefix}/subnets/${l.subnet.toKey()}&${l.ipv6Subnet!.toKey()}`).sort());
    // Every node routes every other node's IPv6 subnet as that node holds it.
    await until(() => recs.every((r, k) => leases.every((l, j) => j === k || r.remote.get(l.subnet.toKey())?.ipv6Subnet?.equals(l.ipv6Subnet!))), 'every node to know the others');
  });
});

describe('two nodes given one PublicIP', () => {
  it('both choosing before either creates: the newer key\'s node deletes it and takes no lease; etcd holds the older alone', async () => {
    const prefix = freshPrefix();
    const gate = new ListingGate(2);
    const nodes = ['a', 'b'].map((id) => {
      const store = registry(prefix);
      gate.hold(store);
      return manager(prefix, '198.18.0.9', {
        store,
        attrs: { publicIP: '198.18.0.9', publicIPv6: null, nodeIdentity: id.repeat(32), backend: { type: 'host-gw' } },
        previousSubnet: Ip4Net.parse(id === 'a' ? '198.19.91.0/24' : '198.19.92.0/24'),
      });
    });
    const results = await Promise.allSettled(nodes.map((m) => m.start(new Recorder().listener)));
    const held = results.findIndex((r) => r.status === 'fulfilled');
    expect(results.map((r) => r.status).sort()).toEqual(['fulfilled', 'rejected']);
    const refused = results[1 - held] as PromiseRejectedResult;
    expect(refused.reason).toBeInstanceOf(PublicIpInUseError);
    expect(nodes[1 - held]!.stats()['gaveWay']).toBe(1);
    const lease = (results[held] as PromiseFulfilledResult<Lease>).value;
    const keys = etcdctl('get', '--prefix', `${prefix}/subnets/`, '--keys-only').split('\n').filter((l) => l !== '');
    expect(keys).toEqual([`${prefix}/subnets/${lease.subnet.toKey()}`]);
  });
});

describe('restart', () => {
  it('reuses the lease carrying our PublicIP, with fresh attributes', async () => {
    const prefix = freshPrefix();
    const first = manager(prefix, '198.18.0.3');
    const a = await first.start(new Recorder().listener);
    await first.stop();
    const again = await manager(prefix, '198.18.0.3', {
      attrs: { publicIP: '198.18.0.3', publicIPv6: null, backend: { type: 'vxlan', vtep: { vni: 1, mac: '02:00:00:00:00:99' }, vtepV6: null } },
    }).start(new Recorder().listener);
    expect(again.subnet.toString()).toBe(a.subnet.toString());
    expect(etcdctl('get', `${prefix}/subnets/${a.subnet.toKey()}`, '--print-value-only')).toContain('02:00:00:00:00:99');
  });

  it('reuses the subnet from the env file when its lease is gone', async () => {
    const prefix = freshPrefix();
    const previous = Ip4Net.parse('198.19.77.0/24');
    const lease = await manager(prefix, '198.18.0.4', { previousSubnet: previous }).start(new Recorder().listener);
    expect(lease.subnet.toString()).toBe('198.19.77.0/24');
  });

  it('does not take the env file subnet when another node holds it', async () => {
    const prefix = freshPrefix();
    etcdctl('put', `${prefix}/subnets/198.19.77.0-24`, '{"PublicIP":"198.18.0.99","PublicIPv6":null}');
    const lease = await manager(prefix, '198.18.0.4', { previousSubnet: Ip4Net.parse('198.19.77.0/24') }).start(new Recorder().listener);
    expect(lease.subnet.toString()).not.toBe('198.19.77.0/24');
  });
});

describe('renewal and loss', () => {
  it('renews the etcd lease before it expires', async () => {
    const prefix = freshPrefix();
    const m = manager(prefix, '198.18.0.5', { ttlSeconds: 12, renewMarginSeconds: 9 }); // renew every ~3 s
    const lease = await m.start(new Recorder().listener);
    // Lease IDs are int64: read them as text, not through JSON numbers.
    const leaseId = () => /"lease":(\d+)/.exec(etcdctl('get', `${prefix}/subnets/${lease.subnet.toKey()}`, '-w', 'json'))![1]!;
    const id = leaseId();
    await until(() => m.stats()['renewals']! >= 2, 'two renewals', 15_000);
    // Well past the original 12 s TTL the key is still there, on the same etcd lease.
    await new Promise((r) => setTimeout(r, 10_000));
    expect(leaseId()).toBe(id);
    const ttl = Number(/remaining\((\d+)s\)/.exec(etcdctl('lease', 'timetolive', BigInt(id).toString(16)))?.[1]);
    expect(ttl).toBeGreaterThan(2);
  }, 40_000);

  it('re-claims the same subnet when our key is deleted under us', async () => {
    const prefix = freshPrefix();
    const m = manager(prefix, '198.18.0.6');
    const lease = await m.start(new Recorder().listener);
    const key = `${prefix}/subnets/${lease.subnet.toKey()}`;
    etcdctl('del', key);
    await until(() => etcdctl('get', key, '--print-value-only').includes('198.18.0.6'), 're-claim');
    expect(m.stats()['reclaims']).toBe(1);
    expect(m.ownLease?.subnet.toString()).toBe(lease.subnet.toString());
  });

  it('moves to a new subnet, and says so, when another node took ours', async () => {
    const prefix = freshPrefix();
    const rec = new Recorder();
    const m = manager(prefix, '198.18.0.8');
    const lease = await m.start(rec.listener);
    etcdctl('put', `${prefix}/subnets/${lease.subnet.toKey()}`, '{"PublicIP":"198.18.0.66","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:66"}}');
    await until(() => rec.changes.includes('moved'), 'a move');
    const moved = rec.own.at(-1)!;
    expect(moved.subnet.toString()).not.toBe(lease.subnet.toString());
    expect(etcdctl('get', `${prefix}/subnets/${moved.subnet.toKey()}`, '--print-value-only')).toContain('198.18.0.8');
    // The thief's lease is now a remote lease like any other.
    await until(() => rec.remote.get(lease.subnet.toKey())?.attrs.publicIP === '198.18.0.66', 'the new holder as a remote lease');
  });
});

describe('events', () => {
  it('hands existing leases over first, then every add and remove', async () => {
    const prefix = freshPrefix();
    const a = manager(prefix, '198.18.0.1');
    const la = await a.start(new Recorder().listener);
    const rec = new Recorder();
    await manager(prefix, '198.18.0.2').start(rec.listener);
    expect([...rec.remote.keys()]).toEqual([la.subnet.toKey()]);
    expect(rec.remote.get(la.subnet.toKey())!.attrs.backend).toEqual({ type: 'vxlan', vtep: { vni: 1, mac: '02:00:00:00:00:01' }, vtepV6: null });
    const lc = await manager(prefix, '198.18.0.3').start(new Recorder().listener);
    await until(() => rec.remote.has(lc.subnet.toKey()), 'the third node');
    etcdctl('del', `${prefix}/subnets/${la.subnet.toKey()}`);
    await a.stop();
    await until(() => !rec.remote.has(la.subnet.toKey()), 'removal');
    // Garbage written by someone else is skipped, never delivered, never fatal.
    etcdctl('put', `${prefix}/subnets/198.19.200.0-24`, 'not json');
    etcdctl('put', `${prefix}/subnets/nonsense`, '{}');
    const ld = await manager(prefix, '198.18.0.4').start(new Recorder().listener);
    await until(() => rec.remote.has(ld.subnet.toKey()), 'a lease after garbage');
    expect(rec.remote.has('198.19.200.0-24')).toBe(false);
  });

  it('a node starting while others claim sees all of them (list and watch from one revision)', async () => {
    const prefix = freshPrefix();
    const recs = Array.from({ length: 8 }, () => new Recorder());
    const leases = await Promise.all(recs.map((r, i) => manager(prefix, `198.18.0.${i + 1}`).start(r.listener)));
    for (const [i, rec] of recs.entries()) {
      const others = leases.filter((_, j) => j !== i).map((l) => l.subnet.toKey()).sort();
      await until(() => [...rec.remote.keys()].sort().join() === others.join(), `node ${i + 1} to see all others`);
    }
  });
});

describe('etcd restart', () => {
  it('loses no event made while the watch was disconnected, nor after compaction', async () => {
    const own = await startEtcd();
    cleanups.push(() => own.stop());
    const port = new URL(own.endpoint).port;
    const prefix = freshPrefix();
    const reg = new EtcdRegistry({ endpoints: [own.endpoint], prefix }, silentLogger);
    cleanups.push(() => reg.close());
    const rec = new Recorder();
    const m = new LeaseManager({
      store: reg,
      network: parseNetworkConfig('{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}'),
      attrs: { publicIP: '198.18.0.1', publicIPv6: null, backend: { type: 'vxlan', vtep: { vni: 1, mac: '02:00:00:00:00:01' }, vtepV6: null } },
      ttlSeconds: 3600,
      renewMarginSeconds: 60,
      previousSubnet: null,
      log: silentLogger,
    });
    cleanups.push(() => m.stop());
    await m.start(rec.listener);
    const ctl = (...args: string[]) => {
      const res = spawnSync('etcdctl', ['--endpoints', own.endpoint, ...args], { env: { ...process.env, ETCDCTL_API: '3' }, encoding: 'utf8' });
      if (res.status !== 0) throw new Error(res.stderr);
      return res.stdout;
    };
    const lease = (n: number) => `{"PublicIP":"198.18.0.${n}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:${n.toString(16).padStart(2, '0')}"}}`;
    ctl('put', `${prefix}/subnets/198.19.10.0-24`, lease(10));
    await until(() => rec.remote.has('198.19.10.0-24'), 'a first lease');

    // Restart etcd with its data. Writes right after it comes back happen before our client's
    // watch has reconnected; they must still arrive.
    await own.stop({ keepData: true });
    const back = await startEtcd({ dataDir: own.dataDir, clientPort: Number(port) });
    cleanups.push(() => back.stop());
    ctl('put', `${prefix}/subnets/198.19.11.0-24`, lease(11));
    ctl('del', `${prefix}/subnets/198.19.10.0-24`);
    await until(() => rec.remote.has('198.19.11.0-24') && !rec.remote.has('198.19.10.0-24'), 'changes made during the reconnect', 30_000);

    // Again, and this time compact history past what the watch has seen: a re-list fills the gap.
    await back.stop({ keepData: true });
    const again = await startEtcd({ dataDir: own.dataDir, clientPort: Number(port) });
    cleanups.push(() => again.stop());
    ctl('put', `${prefix}/subnets/198.19.12.0-24`, lease(12));
    ctl('del', `${prefix}/subnets/198.19.11.0-24`);
    const rev = (JSON.parse(ctl('get', 'x', '-w', 'json')) as { header: { revision: number } }).header.revision;
    ctl('compact', String(rev));
    await until(() => rec.remote.has('198.19.12.0-24') && !rec.remote.has('198.19.11.0-24'), 'changes hidden by compaction', 30_000);
  }, 90_000);
});
