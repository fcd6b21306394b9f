// Dual stack without root: IPv6 maths, lease keys with `&`, the IPv6 config keys, upstream's values and
// env file byte for byte (shared/reference/upstream-wire-format.md, "host-gw and dual stack"),
// allocation of both subnets on the in-memory store, and the older-key-wins rule for overlapping keys.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../src/common/log.js';
import { formatDockerOpts, readFlannelEnv } from '../src/ctl/docker-opts.js';
import { renderLeaseTable } from '../src/ctl/leases-table.js';
import { forwardRules, masqRules } from '../src/netfilter/iptables.js';
import { type KernelEntry, netInside, unicastRoute } from '../src/routes/entries.js';
import { parseBatchErrors } from '../src/routes/ip.js';
import { opCommand } from '../src/routes/iproute2.js';
import { KernelModel } from '../src/routes/model.js';
import { parseRouteLine } from '../src/routes/route.js';
import { IPV6_CHOICES, Ipv6NetworkFullError, chooseSubnet } from '../src/subnet/allocation.js';
import { ConfigError, type NetworkConfig, parseNetworkConfig, sameNetwork } from '../src/subnet/config.js';
import { Ip4Net, parseIp4 } from '../src/common/ip4.js';
import { Ip6Net, formatIp6, isIp6, parseIp6 } from '../src/common/ip6.js';
import { KnownLeases } from '../src/subnet/known-leases.js';
import { type Lease, type LeaseAttrs, type LeaseEvent, decodeLeaseAttrs, encodeLeaseAttrs } from '../src/subnet/lease.js';
import { type LeaseRecord, leaseKeyName, parseLeaseKeyName, parseStoredLease } from '../src/subnet/lease-store.js';
import { LeaseManager } from '../src/subnet/manager.js';
import { MemoryLeaseStore } from '../src/subnet/memory-store.js';
import { previousIpv6Subnet, readSubnetEnvFile, writeSubnetEnvFile } from '../src/subnet/envfile.js';
import { ManualClock, settle } from './harness/manual-clock.js';

// Observed from upstream v0.20.2 (the reference notes).
const UPSTREAM_HOSTGW_KEY = '198.19.36.0-24&2001:2:1:1e::-64';
const UPSTREAM_HOSTGW_VALUE = '{"PublicIP":"198.18.0.1","PublicIPv6":"2001:2::1","BackendType":"host-gw"}';
const UPSTREAM_VXLAN_VALUE =
  '{"PublicIP":"198.18.0.1","PublicIPv6":"2001:2::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6e:ea:d1:f3:98:25"},"BackendV6Data":{"VNI":1,"VtepMAC":"ee:15:d1:bb:e2:89"}}';
const UPSTREAM_ENV =
  'FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_SUBNET=198.19.36.1/24\nFLANNEL_IPV6_NETWORK=2001:2:1::/48\nFLANNEL_IPV6_SUBNET=2001:2:1:1e::1/64\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n';

const DUAL = parseNetworkConfig('{"Network":"198.19.0.0/16","EnableIPv6":true,"IPv6Network":"2001:2:1::/48","Backend":{"Type":"host-gw"}}');

function configError(json: Record<string, unknown>): ConfigError {
  try {
    parseNetworkConfig(JSON.stringify(json));
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error(`accepted ${JSON.stringify(json)}`);
}

describe('IPv6 maths', () => {
  it('parses any text form and prints the canonical one (as Go does: RFC 5952)', () => {
    expect(formatIp6(parseIp6('2001:0002:0001:001E:0000:0000:0000:0001'))).toBe('2001:2:1:1e::1');
    expect(formatIp6(parseIp6('2001:2:0:0:1:0:0:1'))).toBe('2001:2::1:0:0:1'); // the first of two equal runs
    expect(formatIp6(parseIp6('2001:2:1:0:1:1:1:1'))).toBe('2001:2:1:0:1:1:1:1'); // one zero group stays
    expect(formatIp6(0n)).toBe('::');
    expect(parseIp6('::1')).toBe(1n);
    for (const bad of ['2001:2::1::1', '2001:2::g', 'fe80::1%eth0', '198.18.0.1', '', '12345::1']) expect(isIp6(bad), bad).toBe(false);
  });

  it('masks, steps, contains and overlaps exactly across 128 bits', () => {
    const net = Ip6Net.parse('2001:2:1::/48');
    expect(net.size).toBe(1n << 80n);
    expect(formatIp6(net.last)).toBe('2001:2:1:ffff:ffff:ffff:ffff:ffff');
    const sn = new Ip6Net(net.ip + 30n * (1n << 64n), 64);
    expect(sn.toString()).toBe('2001:2:1:1e::/64');
    expect(sn.next()!.toString()).toBe('2001:2:1:1f::/64');
    expect(net.covers(sn)).toBe(true);
    expect(sn.covers(net)).toBe(false);
    expect(sn.overlaps(net)).toBe(true);
    expect(sn.overlaps(sn.next()!)).toBe(false);
    expect(Ip6Net.parse('ffff:ffff:ffff:ffff::/64').next()).toBeNull();
    expect(() => Ip6Net.parse('2001:2:1:1e::1/64')).toThrow(/host bits/);
    expect(Ip6Net.parse('2001:2:1:1e::1/64', true).toString()).toBe('2001:2:1:1e::/64');
    expect(() => Ip6Net.parse('2001:2:1::/129')).toThrow(/prefix length/);
    expect(sn.firstHostCidr()).toBe('2001:2:1:1e::1/64');
  });
});

describe('lease keys with `&`', () => {
  it('reads and writes upstream\'s dual-stack key', () => {
    const { subnet, ipv6Subnet } = parseLeaseKeyName(UPSTREAM_HOSTGW_KEY);
    expect(subnet.toString()).toBe('198.19.36.0/24');
    expect(ipv6Subnet!.toString()).toBe('2001:2:1:1e::/64');
    expect(leaseKeyName(subnet, ipv6Subnet)).toBe(UPSTREAM_HOSTGW_KEY);
    expect(leaseKeyName(subnet)).toBe('198.19.36.0-24');
    expect(parseLeaseKeyName('198.19.36.0-24').ipv6Subnet).toBeNull();
  });

  it.each([
    ['198.19.36.0-24&2001:2:1:1E::-64', /not a subnet key/], // upstream writes and matches lower case only
    ['198.19.36.0-24&2001:2:1:1e::1-64', /host bits/],
    ['198.19.36.0-24&', /not a subnet key/],
    ['198.19.36.0-24&2001:2:1:1e::', /not a subnet key/],
    ['198.19.36.0&2001:2:1:1e::-64', /not a subnet key/],
  ])('refuses %s', (name, reason) => {
    expect(() => parseLeaseKeyName(name)).toThrow(reason);
  });

  it('a malformed dual-stack key is an invalid key naming the reason, not a crash', () => {
    const bad = parseStoredLease({ key: '/p/x&y', name: 'x&y', value: UPSTREAM_HOSTGW_VALUE, leaseId: null, modRevision: '5', createRevision: '5' });
    expect(bad).toMatchObject({ code: 'bad_key', subnet: null });
    const ok = parseStoredLease({ key: `/p/${UPSTREAM_HOSTGW_KEY}`, name: UPSTREAM_HOSTGW_KEY, value: UPSTREAM_HOSTGW_VALUE, leaseId: '7', modRevision: '5', createRevision: '5' });
    expect('code' in ok).toBe(false);
    expect((ok as LeaseRecord).ipv6Subnet!.toString()).toBe('2001:2:1:1e::/64');
  });
});

describe('lease values and env file, byte for byte as upstream', () => {
  it('host-gw and dual-stack vxlan values round-trip exactly', () => {
    const hostgw = decodeLeaseAttrs(UPSTREAM_HOSTGW_VALUE);
    expect(hostgw).toEqual({ publicIP: '198.18.0.1', publicIPv6: '2001:2::1', backend: { type: 'host-gw' } });
    expect(encodeLeaseAttrs(hostgw)).toBe(UPSTREAM_HOSTGW_VALUE);
    const vxlan = decodeLeaseAttrs(UPSTREAM_VXLAN_VALUE);
    expect(vxlan.backend.type === 'vxlan' && vxlan.backend.vtepV6).toEqual({ vni: 1, mac: 'ee:15:d1:bb:e2:89' });
    expect(encodeLeaseAttrs(vxlan)).toBe(UPSTREAM_VXLAN_VALUE);
  });

  it('refuses a PublicIPv6 that is not an IPv6 address, and BackendV6Data that is not an object', () => {
    expect(() => decodeLeaseAttrs('{"PublicIP":"198.18.0.1","PublicIPv6":"198.18.0.1","BackendType":"host-gw"}')).toThrow(/PublicIPv6/);
    expect(() => decodeLeaseAttrs('{"PublicIP":"198.18.0.1","PublicIPv6":"2001:2::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"},"BackendV6Data":[1]}')).toThrow(/BackendV6Data/);
  });

  const dir = mkdtempSync(join(tmpdir(), 'flannel-env6-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('writes the dual-stack env file as upstream does (::1 like .1) and reads it back', () => {
    const path = join(dir, 'subnet.env');
    writeSubnetEnvFile(path, {
      networks: [Ip4Net.parse('198.19.0.0/16')], subnet: Ip4Net.parse('198.19.36.0/24'), mtu: 1500, ipMasq: false,
      ipv6Network: Ip6Net.parse('2001:2:1::/48'), ipv6Subnet: Ip6Net.parse('2001:2:1:1e::/64'),
    });
    expect(readFileSync(path, 'utf8')).toBe(UPSTREAM_ENV);
    const env = readSubnetEnvFile(path);
    expect(env.ipv6Subnet!.toString()).toBe('2001:2:1:1e::/64');
    expect(env.ipv6Network!.toString()).toBe('2001:2:1::/48');
    expect(previousIpv6Subnet(path)!.toString()).toBe('2001:2:1:1e::/64');
  });

  it('flannelctl docker-opts adds Docker\'s IPv6 options for the node\'s IPv6 subnet', () => {
    const path = join(dir, 'subnet.env');
    const opts = { combinedKey: 'DOCKER_OPTS', individual: false, combined: false, ipMasq: true, environment: {} };
    expect(formatDockerOpts(readFlannelEnv(path), opts)).toBe(
      // upstream's script writes --ip-masq=true when flanneld does not masquerade (FLANNEL_IPMASQ=false)
      'DOCKER_OPT_BIP="--bip=198.19.36.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=true"\nDOCKER_OPT_IPV6="--ipv6 --fixed-cidr-v6=2001:2:1:1e::/64"\nDOCKER_OPT_MTU="--mtu=1500"\n' +
        'DOCKER_OPTS=" --bip=198.19.36.1/24 --ip-masq=true --ipv6 --fixed-cidr-v6=2001:2:1:1e::/64 --mtu=1500"\n',
    );
  });

  it('flannelctl leases shows both subnets when a lease has an IPv6 one', () => {
    const { subnet, ipv6Subnet } = parseLeaseKeyName(UPSTREAM_HOSTGW_KEY);
    const record: LeaseRecord = { key: `/p/${UPSTREAM_HOSTGW_KEY}`, subnet, ipv6Subnet, attrs: decodeLeaseAttrs(UPSTREAM_HOSTGW_VALUE), leaseId: null, modRevision: '2', createRevision: '2' };
    const table = renderLeaseTable([{ record, ttlSeconds: null }], []).split('\n');
    expect(table[0]).toMatch(/^SUBNET\s+IPV6 SUBNET\s+PUBLIC IP\s+PUBLIC IPV6\s+BACKEND\s+VTEP MAC\s+EXPIRES$/);
    expect(table[1]).toMatch(/^198\.19\.36\.0\/24\s+2001:2:1:1e::\/64\s+198\.18\.0\.1\s+2001:2::1\s+host-gw\s+-\s+reserved$/);
  });
});

describe('IPv6 config keys', () => {
  it('applies upstream\'s defaults: /64 subnets, from the second to the last', () => {
    expect(DUAL.backend).toEqual({ type: 'host-gw' });
    const v6 = DUAL.ipv6!;
    expect(v6.network.toString()).toBe('2001:2:1::/48');
    expect(v6.subnetLen).toBe(64);
    expect(formatIp6(v6.subnetMin)).toBe('2001:2:1:1::');
    expect(formatIp6(v6.subnetMax)).toBe('2001:2:1:ffff::');
    const small = parseNetworkConfig('{"Network":"198.19.0.0/16","EnableIPv6":true,"IPv6Network":"2001:2:1::/120","Backend":{"Type":"host-gw"}}');
    expect(small.ipv6!.subnetLen).toBe(122);
    const bounded = parseNetworkConfig(JSON.stringify({
      Network: '198.19.0.0/16', EnableIPv6: true, IPv6Network: '2001:2:1::/48', IPv6SubnetLen: 56, IPv6SubnetMin: '2001:2:1:200::', IPv6SubnetMax: '2001:2:1:300::', Backend: { Type: 'host-gw' },
    }));
    expect([bounded.ipv6!.subnetLen, formatIp6(bounded.ipv6!.subnetMin), formatIp6(bounded.ipv6!.subnetMax)]).toEqual([56, '2001:2:1:200::', '2001:2:1:300::']);
    // IPv6 keys without EnableIPv6 are ignored, as upstream ignores them.
    expect(parseNetworkConfig('{"Network":"198.19.0.0/16","IPv6Network":"2001:2:1::/48"}').ipv6).toBeUndefined();
  });

  it.each([
    [{ EnableIPv6: true }, 'IPv6Network', /required/],
    [{ EnableIPv6: 'yes', IPv6Network: '2001:2:1::/48' }, 'EnableIPv6', /true or false/],
    [{ EnableIPv6: true, IPv6Network: '198.19.0.0/16' }, 'IPv6Network', /not an IPv6 address/],
    [{ EnableIPv6: true, IPv6Network: '2001:2:1::/48', IPv6SubnetLen: 49 }, 'IPv6SubnetLen', /at least four/],
    [{ EnableIPv6: true, IPv6Network: '2001:2:1::/48', IPv6SubnetLen: 127 }, 'IPv6SubnetLen', /between 1 and 126/],
    [{ EnableIPv6: true, IPv6Network: '2001:2:1::/48', IPv6SubnetMin: '2001:2:2::' }, 'IPv6SubnetMin', /not inside/],
    [{ EnableIPv6: true, IPv6Network: '2001:2:1::/48', IPv6SubnetMax: '2001:2:1:5::1' }, 'IPv6SubnetMax', /boundary/],
    [{ EnableIPv6: true, IPv6Network: '2001:2:1::/48', IPv6SubnetMin: '2001:2:1:9::', IPv6SubnetMax: '2001:2:1:3::' }, 'IPv6SubnetMin', /above/],
    [{ EnableIPv6: true, IPv6Network: '2001:2:1::/48', Backend: { Type: 'udp' } }, 'EnableIPv6', /udp backend does not support IPv6/],
    [{ EnableIPv6: true, IPv6Network: '2001:2:1::/48', Backend: undefined }, 'EnableIPv6', /udp backend/], // udp is the default backend
    [{ EnableIPv4: false, EnableIPv6: true, IPv6Network: '2001:2:1::/48' }, 'EnableIPv4', /IPv6-only/],
  ])('%j → %s', (extra, field, reason) => {
    const err = configError({ Network: '198.19.0.0/16', Backend: { Type: 'host-gw' }, ...extra });
    expect(err.field).toBe(field);
    expect(err.reason).toMatch(reason);
  });

  it('compares dual-stack configs (a changed IPv6 network is a different network)', () => {
    const other = parseNetworkConfig('{"Network":"198.19.0.0/16","EnableIPv6":true,"IPv6Network":"2001:2:2::/48","Backend":{"Type":"host-gw"}}');
    expect(sameNetwork(DUAL, DUAL)).toBe(true);
    expect(sameNetwork(DUAL, other)).toBe(false);
  });
});

const hostgw = (publicIP: string, publicIPv6: string | null): LeaseAttrs => ({ publicIP, publicIPv6, backend: { type: 'host-gw' } });

describe('allocation of both subnets', () => {
  const managers: LeaseManager[] = [];
  afterEach(async () => {
    for (const m of managers.splice(0)) await m.stop();
  });
  const make = (store: MemoryLeaseStore, clock: ManualClock, i: number, network: NetworkConfig = DUAL, extra: Partial<ConstructorParameters<typeof LeaseManager>[0]> = {}) => {
    let s = i * 7919;
    const m = new LeaseManager({
      store, network, attrs: hostgw(`198.18.0.${i}`, `2001:2::${i.toString(16)}`), ttlSeconds: 3600, renewMarginSeconds: 60, previousSubnet: null,
      log: silentLogger, clock, random: () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32), ...extra,
    });
    managers.push(m);
    return m;
  };

  it('20 nodes claiming at once get distinct IPv4 and IPv6 subnets under `&` keys, and learn each other\'s', async () => {
    const clock = new ManualClock();
    const store = new MemoryLeaseStore(clock);
    const seen: Map<string, Lease>[] = [];
    const leases = await clock.until(Promise.all(Array.from({ length: 20 }, (_, k) => {
      const remote = new Map<string, Lease>();
      seen.push(remote);
      return make(store, clock, k + 1).start({
        onOwnLease: async () => undefined,
        onLeaseEvents: async (events: LeaseEvent[]) => {
          for (const e of events) {
            if (e.type === 'added') remote.set(e.lease.subnet.toString(), e.lease);
            else remote.delete(e.lease.subnet.toString());
          }
        },
      });
    })));
    await settle();
    expect(new Set(leases.map((l) => l.subnet.toString())).size).toBe(20);
    expect(new Set(leases.map((l) => l.ipv6Subnet!.toString())).size).toBe(20);
    for (const l of leases) {
      expect(DUAL.ipv6!.network.covers(l.ipv6Subnet!)).toBe(true);
      expect(l.ipv6Subnet!.prefixLen).toBe(64);
      const stored = store.get(leaseKeyName(l.subnet, l.ipv6Subnet));
      expect(stored?.value).toBe(encodeLeaseAttrs(l.attrs));
    }
    for (const remote of seen) {
      expect(remote.size).toBe(19);
      for (const lease of remote.values()) expect(lease.ipv6Subnet).toBeInstanceOf(Ip6Net);
    }
  });

  it('a restart reuses both subnets (the lease carrying our PublicIP), and an empty store gives back the env file\'s', async () => {
    const clock = new ManualClock();
    const store = new MemoryLeaseStore(clock);
    const noop = { onOwnLease: async () => undefined, onLeaseEvents: async () => undefined };
    const first = await clock.until(make(store, clock, 1).start(noop));
    await managers.pop()!.stop();
    const again = await clock.until(make(store, clock, 1).start(noop));
    expect([again.subnet.toString(), again.ipv6Subnet!.toString()]).toEqual([first.subnet.toString(), first.ipv6Subnet!.toString()]);
    await managers.pop()!.stop();
    // The key is gone (expired while we were down): the env file's subnets are claimed again.
    store.deleteKey(leaseKeyName(first.subnet, first.ipv6Subnet));
    const fresh = await clock.until(make(store, clock, 1, DUAL, { previousSubnet: first.subnet, previousIpv6Subnet: first.ipv6Subnet }).start(noop));
    expect([fresh.subnet.toString(), fresh.ipv6Subnet!.toString()]).toEqual([first.subnet.toString(), first.ipv6Subnet!.toString()]);
  });

  it('chooses among the lowest free IPv6 subnets, skips keys that cover many at once, and reports a full IPv6 range', () => {
    const listing = (names: string[]) => ({
      records: names.map((n, i) => {
        const { subnet, ipv6Subnet } = parseLeaseKeyName(n);
        return { key: `/p/${n}`, subnet, ipv6Subnet, attrs: hostgw(`198.18.0.${100 + i}`, null), leaseId: '1', modRevision: '2', createRevision: '2' };
      }),
      invalid: [{ key: '/p/bad', code: 'wrong_prefix_len', reason: 'x', subnet: Ip4Net.parse('198.19.250.0/24'), ipv6Subnet: Ip6Net.parse('2001:2:1:100::/56'), modRevision: '2' }],
      revision: '3',
    });
    const base = { network: DUAL, publicIP: '198.18.0.1', preferred: null, avoid: null, reclaiming: false };
    const l = listing(['198.19.1.0-24&2001:2:1:1::-64']);
    const low = chooseSubnet(l, { ...base, random: () => 0 });
    expect(low.kind === 'create' && low.ipv6Subnet!.toString()).toBe('2001:2:1:2::/64');
    // random() just below 1 picks the last of the IPV6_CHOICES lowest free ones: past the /56 key (256 subnets) not inside it.
    const high = chooseSubnet(l, { ...base, random: () => 0.9999 });
    const expectedLast = (BigInt(IPV6_CHOICES) + 1n).toString(16); // 2..0x65 free, :1 taken; the /56 starts at :100
    expect(high.kind === 'create' && high.ipv6Subnet!.toString()).toBe(`2001:2:1:${expectedLast}::/64`);
    const crowded = listing(['198.19.1.0-24&2001:2:1:1::-64']);
    crowded.invalid[0]!.ipv6Subnet = Ip6Net.parse('2001:2:1:0::/50');
    const past = chooseSubnet(crowded, { ...base, random: () => 0 });
    expect(past.kind === 'create' && past.ipv6Subnet!.toString()).toBe('2001:2:1:4000::/64');
    const tiny = parseNetworkConfig(JSON.stringify({ Network: '198.19.0.0/16', EnableIPv6: true, IPv6Network: '2001:2:1::/62', Backend: { Type: 'host-gw' } }));
    const full = listing(['198.19.1.0-24&2001:2:1:1::-64', '198.19.2.0-24&2001:2:1:2::-64', '198.19.3.0-24&2001:2:1:3::-64']);
    expect(() => chooseSubnet(full, { ...base, network: tiny, random: () => 0 })).toThrow(Ipv6NetworkFullError);
    expect(() => chooseSubnet(full, { ...base, network: tiny, random: () => 0 })).toThrow(/no free IPv6 subnet/);
  });
});

describe('keys claiming the same addresses: the older one wins, whatever the order', () => {
  const rec = (name: string, createRevision: number, publicIP: string): LeaseRecord => {
    const { subnet, ipv6Subnet } = parseLeaseKeyName(name);
    return { key: `/p/${name}`, subnet, ipv6Subnet, attrs: hostgw(publicIP, '2001:2::9'), leaseId: '1', modRevision: String(createRevision), createRevision: String(createRevision) };
  };
  const older = rec('198.19.5.0-24&2001:2:1:5::-64', 10, '198.18.0.5');
  const sameV6 = rec('198.19.6.0-24&2001:2:1:5::-64', 20, '198.18.0.6');
  const sameV4NoV6 = rec('198.19.5.0-24', 30, '198.18.0.7');
  const unrelated = rec('198.19.8.0-24&2001:2:1:8::-64', 40, '198.18.0.8');
  const active = (_known: KnownLeases, events: LeaseEvent[], into = new Map<string, string>()) => {
    for (const e of events) {
      if (e.type === 'added') into.set(e.lease.subnet.toString(), e.lease.attrs.publicIP);
      else into.delete(e.lease.subnet.toString());
    }
    return into;
  };

  it('in a listing, in either order', () => {
    for (const records of [[older, sameV6, sameV4NoV6, unrelated], [unrelated, sameV4NoV6, sameV6, older]]) {
      const known = new KnownLeases(DUAL, silentLogger);
      const now = active(known, known.replaceAll({ records, invalid: [], revision: '50' }));
      expect(Object.fromEntries(now)).toEqual({ '198.19.5.0/24': '198.18.0.5', '198.19.8.0/24': '198.18.0.8' });
      expect(known.refusedByReason.get('overlap_older_lease')).toBe(2);
    }
  });

  it('through watched changes: the newer key is refused, and used once the older one is deleted', () => {
    const known = new KnownLeases(DUAL, silentLogger);
    const now = active(known, known.replaceAll({ records: [older], invalid: [], revision: '15' }));
    active(known, known.apply([{ type: 'put', record: sameV6 }]), now);
    expect([...now.keys()]).toEqual(['198.19.5.0/24']);
    const events = known.apply([{ type: 'delete', key: older.key, subnet: older.subnet, ipv6Subnet: older.ipv6Subnet ?? null, revision: '25' }]);
    expect(events.map((e) => e.type).sort()).toEqual(['added', 'removed']);
    active(known, events, now);
    expect(Object.fromEntries(now)).toEqual({ '198.19.6.0/24': '198.18.0.6' });
  });

  it('a key that claims our own IPv6 subnet is refused as an overlap', () => {
    const known = new KnownLeases(DUAL, silentLogger);
    known.setOwn(Ip4Net.parse('198.19.9.0/24'), Ip6Net.parse('2001:2:1:5::/64'));
    const now = active(known, known.replaceAll({ records: [older, unrelated], invalid: [], revision: '50' }));
    expect([...now.keys()]).toEqual(['198.19.8.0/24']);
    expect(known.refusedByReason.get('overlap')).toBe(1);
  });

  it('an IPv6 subnet outside IPv6Network or of another length is refused by reason', () => {
    const known = new KnownLeases(DUAL, silentLogger);
    const outside = rec('198.19.11.0-24&2001:2:2:1::-64', 5, '198.18.0.11');
    const wrongLen = rec('198.19.12.0-24&2001:2:1:c00::-56', 6, '198.18.0.12');
    const now = active(known, known.replaceAll({ records: [outside, wrongLen], invalid: [], revision: '50' }));
    expect(now.size).toBe(0);
    expect(Object.fromEntries(known.refusedByReason)).toEqual({ outside_network: 1, wrong_prefix_len: 1 });
  });
});

describe('ip6tables rules', () => {
  it('are the IPv4 rule set over the IPv6 network, with IPv6 multicast excluded from masquerading', () => {
    const f = { family: 6, network: Ip6Net.parse('2001:2:1::/48'), subnet: Ip6Net.parse('2001:2:1:1e::/64') } as const;
    // The jump from FORWARD is not one of the chain's rules (src/netfilter/iptables.ts adds it to the transaction).
    expect(forwardRules(f).map((r) => r.join(' '))).toEqual([
      '-s 2001:2:1::/48 -m comment --comment flanneld forward -j ACCEPT',
      '-d 2001:2:1::/48 -m comment --comment flanneld forward -j ACCEPT',
    ]);
    const masq = masqRules(f, true).map((r) => r.join(' '));
    expect(masq).toContain('-s 2001:2:1::/48 ! -d ff00::/8 -m comment --comment flanneld masq -j MASQUERADE --random-fully');
    expect(masq).toContain('! -s 2001:2:1::/48 -d 2001:2:1:1e::/64 -m comment --comment flanneld masq -j RETURN');
  });
});

describe('host-gw route plan (pure)', () => {
  // host-gw's routes of both families in the kernel model: gatewayed routes on the underlay inside the networks are ours.
  const networks = [Ip4Net.parse('198.19.0.0/16'), Ip6Net.parse('2001:2:1::/48')];
  const ours = (e: KernelEntry) => e.kind === 'route' && e.via !== null && networks.some((n) => netInside(e.dst, n));
  const peer = (model: KernelModel, dst: string, via: string) =>
    model.set(dst, [unicastRoute(dst.includes(':') ? Ip6Net.parse(dst) : Ip4Net.parse(dst), 'eth0', dst.includes(':') ? parseIp6(via) : parseIp4(via))]);
  const kernel = (lines: string[]) => lines.map((l) => parseRouteLine(l, l.includes(':') ? 6 : 4)!);
  it('adds missing and misdirected routes, removes only its own stale ones, and leaves the rest', () => {
    const model = new KernelModel();
    peer(model, '198.19.2.0/24', '198.18.0.2');
    peer(model, '198.19.3.0/24', '198.18.0.3');
    peer(model, '2001:2:1:2::/64', '2001:2::2');
    const have = kernel([
      '198.19.2.0/24 via 198.18.0.2 dev eth0', // right: kept
      '198.19.3.0/24 via 198.18.0.9 dev eth0', // wrong gateway: replaced
      '198.19.4.0/24 via 198.18.0.4 dev eth0', // stale lease: removed
      '198.18.0.0/24 dev eth0 proto kernel scope link src 198.18.0.1', // the underlay's own: kept
      '203.0.113.0/24 via 198.18.0.254 dev eth0 proto static', // someone else's: kept
    ]);
    expect(model.resetFromKernel(have, ours)).toEqual([]);
    const plan = model.plan();
    expect(plan.map(opCommand)).toEqual([
      ['route', 'del', '198.19.4.0/24', 'via', '198.18.0.4', 'dev', 'eth0'],
      ['route', 'replace', '198.19.3.0/24', 'via', '198.18.0.3', 'dev', 'eth0'],
      ['route', 'replace', '2001:2:1:2::/64', 'via', '2001:2::2', 'dev', 'eth0'],
    ]);
    expect([plan.filter((o) => o.action === 'replace').length, plan.filter((o) => o.action === 'delete').length]).toEqual([2, 1]);
    const right = kernel(['198.19.2.0/24 via 198.18.0.2 dev eth0', '198.19.3.0/24 via 198.18.0.3 dev eth0', '2001:2:1:2::/64 via 2001:2::2 dev eth0 metric 1024 pref medium']);
    model.resetFromKernel([...have.slice(0, 1), ...right], ours);
    expect(model.plan()).toEqual([]);
  });

  it('counts the lines an ip -force -batch run refused', () => {
    expect(parseBatchErrors('Error: Nexthop has invalid gateway.\nCommand failed -:1\nError: x\nCommand failed -:3\n', 1).failed.size).toBe(2);
    expect(parseBatchErrors('', 0).failed.size).toBe(0);
  });
});
