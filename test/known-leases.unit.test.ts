// The known-lease set kept incrementally (a watch batch costs its own size) must always equal the
// set decided from scratch over the same keys: random change streams, including keys that contest a
// subnet, refused values, our own subnet, and deletions, checked after every batch.
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../src/common/log.js';
import { parseNetworkConfig } from '../src/subnet/config.js';
import { Ip4Net } from '../src/common/ip4.js';
import { Ip6Net } from '../src/common/ip6.js';
import { KnownLeases } from '../src/subnet/known-leases.js';
import type { LeaseChange, LeaseRecord } from '../src/subnet/lease-store.js';

const network = parseNetworkConfig('{"Network":"198.19.0.0/16","EnableIPv6":true,"IPv6Network":"2001:2:1::/48","Backend":{"Type":"vxlan"}}');

function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

describe('known leases, incremental against from-scratch', () => {
  it.each([1, 2, 3, 4, 5])('random change stream %i: the same leases after every batch', (seed) => {
    const rnd = seeded(seed);
    const pick = <T,>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
    const own = { subnet: Ip4Net.parse('198.19.9.0/24'), ipv6Subnet: Ip6Net.parse('2001:2:1:9::/64') };
    const v4 = [1, 2, 3, 4, 9].map((i) => `198.19.${i}.0-24`).concat(['198.19.8.0-23', '198.19.5.0-25']);
    const v6 = ['2001:2:1:1::-64', '2001:2:1:2::-64', '2001:2:1:9::-64', null];
    const incremental = new KnownLeases(network, silentLogger);
    incremental.setOwn(own.subnet, own.ipv6Subnet);
    const live = new Map<string, LeaseRecord>();
    let revision = 10;
    for (let batch = 0; batch < 60; batch++) {
      const changes: LeaseChange[] = [];
      for (let n = 1 + Math.floor(rnd() * 4); n > 0; n--) {
        revision++;
        const v4key = pick(v4);
        const v6key = pick(v6);
        const name = v6key ? `${v4key}&${v6key}` : v4key;
        const key = `/p/${name}`;
        const [a, len] = v4key.split('-');
        const subnet = new Ip4Net(Ip4Net.parse(`${a}/32`).ip, Number(len));
        const ipv6Subnet = v6key ? Ip6Net.fromKey(v6key) : null;
        const roll = rnd();
        if (roll < 0.25 && live.has(key)) {
          live.delete(key);
          changes.push({ type: 'delete', key, subnet, revision: String(revision) });
        } else if (roll < 0.35) {
          live.delete(key);
          changes.push({ type: 'invalid', key, code: 'bad_json', reason: 'x', subnet, modRevision: String(revision), revision: String(revision) });
        } else {
          const created = live.get(key)?.createRevision ?? String(revision);
          const record: LeaseRecord = {
            key, subnet, ipv6Subnet, leaseId: '1', modRevision: String(revision), createRevision: created,
            // A few MACs for many keys: keys also contest VTEP MACs (the older keeps it).
            attrs: { publicIP: `198.18.0.${1 + Math.floor(rnd() * 5)}`, publicIPv6: null, backend: { type: 'vxlan', vtep: { vni: 1, mac: `02:00:00:00:00:0${Math.floor(rnd() * 6)}` }, vtepV6: null } },
          };
          live.set(key, record);
          changes.push({ type: 'put', record });
        }
      }
      incremental.apply(changes);
      const fresh = new KnownLeases(network, silentLogger);
      fresh.setOwn(own.subnet, own.ipv6Subnet);
      const events = fresh.replaceAll({ records: [...live.values()], invalid: [], revision: String(revision) });
      const want = events.filter((e) => e.type === 'added').map((e) => `${e.lease.subnet} ${e.lease.ipv6Subnet ?? '-'} ${e.lease.attrs.publicIP}`).sort();
      expect(incremental.snapshot().map((l) => `${l.subnet} ${l.ipv6Subnet ?? '-'} ${l.attrs.publicIP}`).sort(), `batch ${batch}`).toEqual(want);
    }
  });
});

const v4only = parseNetworkConfig('{"Network":"198.19.0.0/16","SubnetLen":29,"Backend":{"Type":"vxlan"}}');
let revision = 100;
/** A put of `name`; its VTEP MAC is `mac`, or one of its own. */
function put(name: string, publicIP: string, createRevision?: string, mac?: string): LeaseChange {
  const [v4key, v6key] = name.split('&') as [string, string | undefined];
  const rev = String(++revision);
  return {
    type: 'put',
    record: {
      key: `/p/${name}`, subnet: Ip4Net.fromKey(v4key), ipv6Subnet: v6key ? Ip6Net.fromKey(v6key) : null, leaseId: '1', modRevision: rev,
      createRevision: createRevision ?? rev,
      attrs: { publicIP, publicIPv6: null, backend: { type: 'vxlan', vtep: { vni: 1, mac: mac ?? `02:00:00:00:${(revision >> 8).toString(16).padStart(2, '0')}:${(revision & 255).toString(16).padStart(2, '0')}` }, vtepV6: null } },
    },
  };
}

describe('known leases, decided by claim group', () => {
  it('a contested pair flapping among 2,000 keys costs its own two keys per change, never a pass over all', () => {
    const known = new KnownLeases(v4only, silentLogger);
    known.setOwn(Ip4Net.parse('198.19.0.0/29'));
    const records = Array.from({ length: 2000 }, (_, i) => (put(new Ip4Net(Ip4Net.parse('198.19.8.0/29').ip + i * 8, 29).toKey(), '198.18.0.2') as { record: LeaseRecord }).record);
    known.replaceAll({ records, invalid: [], revision: String(revision) });
    const older = put('198.19.250.0-29', '198.18.0.10');
    const newer = put('198.19.250.0-29&2001:2:1:7::-64', '198.18.0.11');
    known.apply([older, newer]);
    const base = known.decisions;
    for (let i = 0; i < 100; i++) {
      const events = known.apply([put('198.19.250.0-29&2001:2:1:7::-64', `198.18.0.${20 + (i % 2)}`)]);
      expect(events, 'the newer key never takes the subnet').toEqual([]);
      const changed = known.apply([put('198.19.250.0-29', `198.18.0.${30 + (i % 2)}`, (older as { record: LeaseRecord }).record.createRevision)]);
      expect(changed.map((e) => `${e.type} ${e.lease.subnet} ${e.lease.attrs.publicIP}`)).toEqual([`added 198.19.250.0/29 198.18.0.${30 + (i % 2)}`]);
    }
    expect(known.decisions - base).toBe(200 * 2);
    expect(known.size).toBe(2001);
  });

  it('dual stack: a chain of keys linked by shared subnets is decided oldest first, as a whole', () => {
    const known = new KnownLeases(network, silentLogger);
    known.setOwn(Ip4Net.parse('198.19.9.0/24'), Ip6Net.parse('2001:2:1:9::/64'));
    const y = put('198.19.1.0-24&2001:2:1:1::-64', '198.18.0.1'); // oldest: 198.19.1.0 and 2001:2:1:1::
    const x = put('198.19.1.0-24&2001:2:1:2::-64', '198.18.0.2'); // loses 198.19.1.0 to y: claims nothing
    const z = put('198.19.3.0-24&2001:2:1:2::-64', '198.18.0.3'); // shares 2001:2:1:2:: with x only
    const used = () => known.snapshot().map((l) => l.attrs.publicIP).sort();
    known.apply([z, x, y]);
    expect(used()).toEqual(['198.18.0.1', '198.18.0.3']);
    // y goes: x is the oldest left on 198.19.1.0, and then z loses 2001:2:1:2:: to x. The subnet y held
    // changes hands in one 'added' (the backend replaces its entries), z's goes.
    const events = known.apply([{ type: 'delete', key: (y as { record: LeaseRecord }).record.key, subnet: Ip4Net.parse('198.19.1.0/24'), revision: String(++revision) }]);
    expect(used()).toEqual(['198.18.0.2']);
    expect(events.map((e) => `${e.type} ${e.lease.attrs.publicIP}`).sort()).toEqual(['added 198.18.0.2', 'removed 198.18.0.3']);
  });
});

describe('known leases, VTEP MACs and our own PublicIP', () => {
  const lines = (): { log: import('../src/common/log.js').Logger; seen: Record<string, unknown>[] } => {
    const seen: Record<string, unknown>[] = [];
    const log = { warn: (fields: Record<string, unknown>, msg: string) => seen.push({ ...fields, msg }), info: () => undefined, debug: () => undefined, error: () => undefined } as unknown as import('../src/common/log.js').Logger;
    return { log, seen };
  };
  const ownAttrs = { publicIP: '198.18.0.1', publicIPv6: null, backend: { type: 'vxlan' as const, vtep: { vni: 1, mac: '02:aa:00:00:00:01' }, vtepV6: { vni: 1, mac: '02:aa:00:00:00:06' } } };
  const used = (k: KnownLeases) => k.snapshot().map((l) => `${l.subnet} ${l.attrs.publicIP}`).sort();

  it('of two leases with one VTEP MAC the older keeps it, whatever the order of arrival and after a restart; the newer is refused once', () => {
    const older = put('198.19.1.0-29', '198.18.0.2', '10', '02:bb:00:00:00:02');
    const newer = put('198.19.2.0-29', '198.18.0.3', '20', '02:bb:00:00:00:02');
    for (const order of [[older, newer], [newer, older]]) {
      const { log, seen } = lines();
      const known = new KnownLeases(v4only, log);
      known.setOwn(Ip4Net.parse('198.19.0.0/29'), null, { ...ownAttrs, backend: { ...ownAttrs.backend, vtepV6: null } });
      for (const change of order) known.apply([change]);
      expect(used(known)).toEqual(['198.19.1.0/29 198.18.0.2']);
      expect(known.refusedByReason.get('duplicate_vtep_mac')).toBe(1);
      // Rewritten again and again: counted per change, said once.
      for (let i = 0; i < 5; i++) known.apply([put('198.19.2.0-29', '198.18.0.3', '20', '02:bb:00:00:00:02')]);
      expect(seen.filter((l) => l['code'] === 'duplicate_vtep_mac')).toHaveLength(1);
      expect(known.refusedByReason.get('duplicate_vtep_mac')).toBe(6);
      // A node starting now (a listing) decides the same.
      const fresh = new KnownLeases(v4only, silentLogger);
      fresh.setOwn(Ip4Net.parse('198.19.0.0/29'));
      fresh.replaceAll({ records: [newer, older].map((c) => (c as { record: LeaseRecord }).record), invalid: [], revision: '30' });
      expect(used(fresh)).toEqual(['198.19.1.0/29 198.18.0.2']);
      // The older goes: the MAC is the newer's now.
      const events = known.apply([{ type: 'delete', key: '/p/198.19.1.0-29', subnet: Ip4Net.parse('198.19.1.0/29'), revision: String(++revision) }]);
      expect(events.map((e) => `${e.type} ${e.lease.subnet}`).sort()).toEqual(['added 198.19.2.0/29', 'removed 198.19.1.0/29']);
    }
  });

  it('refuses a lease carrying our own VTEP MAC (either family) or our own PublicIP', () => {
    const dual = parseNetworkConfig('{"Network":"198.19.0.0/16","SubnetLen":29,"EnableIPv6":true,"IPv6Network":"2001:2:1::/48","Backend":{"Type":"vxlan"}}');
    const known = new KnownLeases(dual, silentLogger);
    known.setOwn(Ip4Net.parse('198.19.0.0/29'), Ip6Net.parse('2001:2:1::/64'), ownAttrs);
    const withV6 = (change: LeaseChange, mac6: string): LeaseChange => {
      const { record } = change as { record: LeaseRecord };
      const backend = record.attrs.backend.type === 'vxlan' ? { ...record.attrs.backend, vtepV6: { vni: 1, mac: mac6 } } : record.attrs.backend;
      return { type: 'put', record: { ...record, attrs: { ...record.attrs, backend } } };
    };
    known.apply([
      withV6(put('198.19.1.0-29&2001:2:1:1::-64', '198.18.0.2', undefined, '02:aa:00:00:00:01'), '02:cc:00:00:00:01'),
      withV6(put('198.19.2.0-29&2001:2:1:2::-64', '198.18.0.3', undefined, '02:cc:00:00:00:02'), '02:aa:00:00:00:06'),
      withV6(put('198.19.3.0-29&2001:2:1:3::-64', '198.18.0.1', undefined, '02:cc:00:00:00:03'), '02:cc:00:00:00:13'),
      withV6(put('198.19.4.0-29&2001:2:1:4::-64', '198.18.0.4', undefined, '02:cc:00:00:00:04'), '02:cc:00:00:00:14'),
    ]);
    expect(used(known)).toEqual(['198.19.4.0/29 198.18.0.4']);
    expect(Object.fromEntries(known.refusedByReason)).toEqual({ duplicate_vtep_mac: 2, duplicate_public_ip: 1 });
  });
});

describe('known leases, WireGuard public keys', () => {
  const wg = parseNetworkConfig('{"Network":"198.19.0.0/16","SubnetLen":29,"EnableIPv6":true,"IPv6Network":"2001:2:1::/48","Backend":{"Type":"wireguard"}}');
  const key = (n: number): string => Buffer.alloc(32, n).toString('base64');
  /** A wireguard lease of `name` with public key `k` on both devices (as upstream writes it). */
  const wgPut = (name: string, publicIP: string, k: string, createRevision?: string): LeaseChange => {
    const { record } = put(name, publicIP, createRevision) as { record: LeaseRecord };
    return { type: 'put', record: { ...record, attrs: { ...record.attrs, backend: { type: 'wireguard', peer: { publicKey: k, port: 51820 }, peerV6: { publicKey: k, port: 51821 } } } } };
  };
  const own = { publicIP: '198.18.0.1', publicIPv6: null, backend: { type: 'wireguard' as const, peer: { publicKey: key(1), port: 51820 }, peerV6: { publicKey: key(1), port: 51821 } } };
  const used = (k: KnownLeases) => k.snapshot().map((l) => `${l.subnet} ${l.attrs.publicIP}`).sort();
  const ownLease = (k: KnownLeases) => k.setOwn(Ip4Net.parse('198.19.0.0/29'), Ip6Net.parse('2001:2:1::/64'), own);

  it('of two leases with one public key the older keeps it, whatever the order and after a restart; the newer is refused, counted per change, said once', () => {
    const older = wgPut('198.19.1.0-29&2001:2:1:1::-64', '198.18.0.2', key(2), '10');
    const newer = wgPut('198.19.2.0-29&2001:2:1:2::-64', '198.18.0.3', key(2), '20');
    for (const order of [[older, newer], [newer, older]]) {
      const seen: Record<string, unknown>[] = [];
      const log = { warn: (fields: Record<string, unknown>, msg: string) => seen.push({ ...fields, msg }), info: () => undefined, debug: () => undefined, error: () => undefined } as unknown as import('../src/common/log.js').Logger;
      const known = new KnownLeases(wg, log);
      ownLease(known);
      for (const change of order) known.apply([change]);
      expect(used(known)).toEqual(['198.19.1.0/29 198.18.0.2']);
      for (let i = 0; i < 3; i++) known.apply([wgPut('198.19.2.0-29&2001:2:1:2::-64', '198.18.0.3', key(2), '20')]);
      expect(known.refusedByReason.get('duplicate_public_key')).toBe(4);
      const said = seen.filter((l) => l['code'] === 'duplicate_public_key');
      expect(said).toHaveLength(1);
      expect(said[0]).toMatchObject({ msg: 'skipping a lease whose WireGuard public key belongs to another node', reason: `WireGuard public key ${key(2)} belongs to the older key /p/198.19.1.0-29&2001:2:1:1::-64` });
      // A node starting now (a listing) decides the same.
      const fresh = new KnownLeases(wg, silentLogger);
      ownLease(fresh);
      fresh.replaceAll({ records: [newer, older].map((c) => (c as { record: LeaseRecord }).record), invalid: [], revision: '30' });
      expect(used(fresh)).toEqual(['198.19.1.0/29 198.18.0.2']);
      // The older goes: the key is the newer's now.
      const events = known.apply([{ type: 'delete', key: '/p/198.19.1.0-29&2001:2:1:1::-64', subnet: Ip4Net.parse('198.19.1.0/29'), revision: String(++revision) }]);
      expect(events.map((e) => `${e.type} ${e.lease.subnet}`).sort()).toEqual(['added 198.19.2.0/29', 'removed 198.19.1.0/29']);
    }
  });

  it('refuses a lease carrying our own public key, on either device; other backends\' leases never contest a key', () => {
    const known = new KnownLeases(wg, silentLogger);
    ownLease(known);
    const v6Only = wgPut('198.19.3.0-29&2001:2:1:3::-64', '198.18.0.4', key(3));
    const { record } = v6Only as { record: LeaseRecord };
    known.apply([
      wgPut('198.19.1.0-29&2001:2:1:1::-64', '198.18.0.2', key(1)),
      { type: 'put', record: { ...record, attrs: { ...record.attrs, backend: { type: 'wireguard', peer: { publicKey: key(3), port: 51820 }, peerV6: { publicKey: key(1), port: 51821 } } } } },
      wgPut('198.19.4.0-29&2001:2:1:4::-64', '198.18.0.5', key(4)),
      put('198.19.5.0-29&2001:2:1:5::-64', '198.18.0.6'),
    ]);
    expect(used(known)).toEqual(['198.19.4.0/29 198.18.0.5', '198.19.5.0/29 198.18.0.6']);
    expect(Object.fromEntries(known.refusedByReason)).toEqual({ duplicate_public_key: 2 });
  });
});
