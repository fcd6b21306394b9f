// The etcd registry against a real etcd: listings in pages at one revision, listings and watches
// that carry more than gRPC's default 4 MiB, and single values too big for any response.
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../src/common/log.js';
import { EtcdRegistry } from '../src/etcd/registry.js';
import { parseNetworkConfig } from '../src/subnet/config.js';
import { Ip4Net } from '../src/common/ip4.js';
import { encodeLeaseAttrs } from '../src/subnet/lease.js';
import type { LeaseChange } from '../src/subnet/lease-store.js';
import { LeaseManager } from '../src/subnet/manager.js';
import { type EtcdServer, startEtcd } from '../testbed/etcd.js';
import { waitFor } from '../testbed/netns.js';

let etcd: EtcdServer;
let client: Etcd3;
let prefixCounter = 0;
const freshPrefix = () => `/registry-t${process.pid}-${prefixCounter++}`;
/** The i-th lease's value: its own PublicIP and VTEP MAC. */
const value = (i: number) => encodeLeaseAttrs({
  publicIP: `198.18.${1 + (i >> 8)}.${i & 255}`, publicIPv6: null,
  backend: { type: 'vxlan', vtep: { vni: 1, mac: `02:00:00:01:${(i >> 8).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}` }, vtepV6: null },
});
/** 1.2 MB: under etcd's default request limit (1.5 MiB), over a quarter of gRPC's default 4 MiB. */
const HUGE = 'x'.repeat(1_200_000);

beforeAll(async () => {
  etcd = await startEtcd();
  client = new Etcd3({ hosts: etcd.endpoint });
});
afterAll(async () => {
  client.close();
  await etcd.stop();
});

function registry(prefix: string, maxReceiveBytes?: number): EtcdRegistry {
  return new EtcdRegistry({ endpoints: [etcd.endpoint], prefix, ...(maxReceiveBytes ? { maxReceiveBytes } : {}) }, silentLogger);
}

describe('listing', () => {
  it('reads 2,500 leases in pages, all at one revision, even while others write', async () => {
    const prefix = freshPrefix();
    const names: string[] = [];
    for (let i = 0; i < 2500; i++) names.push(new Ip4Net(Ip4Net.parse('198.19.0.0/16').ip + i * 16, 28).toKey());
    for (let i = 0; i < names.length; i += 250) {
      await Promise.all(names.slice(i, i + 250).map((n, j) => client.put(`${prefix}/subnets/${n}`).value(value(i + j))));
    }
    const r = registry(prefix);
    try {
      // Writes during the listing land after its revision: none of them may appear in it.
      const writer = (async () => {
        for (let i = 0; i < 20; i++) await client.put(`${prefix}/subnets/198.19.250.${i * 8}-29`).value(value(i));
      })();
      const listing = await r.listLeases();
      await writer;
      expect(listing.records.length + listing.invalid.length).toBeGreaterThanOrEqual(2500);
      const late = listing.records.filter((rec) => BigInt(rec.modRevision) > BigInt(listing.revision));
      expect(late).toEqual([]);
      expect(new Set(listing.records.map((rec) => rec.key)).size).toBe(listing.records.length);
      for (const n of names) expect(listing.records.some((rec) => rec.subnet.toKey() === n), n).toBe(true);
    } finally {
      r.close();
    }
  });

  it('more than 4 MiB under subnets/ (four values of 1.2 MB) is listed, and a manager starts beside them', async () => {
    const prefix = freshPrefix();
    for (let i = 0; i < 4; i++) await client.put(`${prefix}/subnets/198.19.${10 + i}.0-24`).value(HUGE);
    for (let i = 0; i < 3; i++) await client.put(`${prefix}/subnets/198.19.${20 + i}.0-24`).value(value(i));
    const r = registry(prefix);
    try {
      const listing = await r.listLeases();
      expect(listing.records.map((rec) => rec.subnet.toString()).sort()).toEqual(['198.19.20.0/24', '198.19.21.0/24', '198.19.22.0/24']);
      expect(listing.invalid.map((bad) => bad.subnet?.toString()).sort()).toEqual(['198.19.10.0/24', '198.19.11.0/24', '198.19.12.0/24', '198.19.13.0/24']);
      const m = new LeaseManager({
        store: r,
        network: parseNetworkConfig('{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}'),
        attrs: { publicIP: '198.18.0.1', publicIPv6: null, backend: { type: 'vxlan', vtep: { vni: 1, mac: '02:00:00:00:00:01' }, vtepV6: null } },
        ttlSeconds: 600,
        renewMarginSeconds: 60,
        previousSubnet: null,
        log: silentLogger,
      });
      const remote = new Set<string>();
      const own = await m.start({
        onOwnLease: async () => undefined,
        onLeaseEvents: async (events) => {
          for (const e of events) (e.type === 'added' ? remote.add(e.lease.subnet.toString()) : remote.delete(e.lease.subnet.toString()));
        },
      });
      await m.stop();
      expect(own.subnet.toString()).not.toMatch(/^198\.19\.(1[0-3]|2[0-2])\.0/);
      expect([...remote].sort()).toEqual(['198.19.20.0/24', '198.19.21.0/24', '198.19.22.0/24']);
    } finally {
      r.close();
    }
  });

  it('a page too big for the receive limit is read in smaller pages; a value too big alone is reported as too large', async () => {
    const prefix = freshPrefix();
    for (let i = 0; i < 4; i++) await client.put(`${prefix}/subnets/198.19.${30 + i}.0-24`).value(`{"PublicIP":"198.18.0.9","pad":"${'y'.repeat(600_000)}"}`);
    await client.put(`${prefix}/subnets/198.19.40.0-24`).value(HUGE);
    for (let i = 0; i < 3; i++) await client.put(`${prefix}/subnets/198.19.${50 + i}.0-24`).value(value(i));
    // 1 MiB: the four 600 kB values fit one at a time (not together), the 1.2 MB one never.
    const r = registry(prefix, 1024 * 1024);
    try {
      const listing = await r.listLeases();
      expect(listing.records.map((rec) => rec.subnet.toString()).sort()).toEqual(['198.19.50.0/24', '198.19.51.0/24', '198.19.52.0/24']);
      // The 600 kB values were read (in small pages) and refused by the lease parser as too large;
      // the 1.2 MB one could not be read at all and is reported without its value.
      const invalid = new Map(listing.invalid.map((bad) => [bad.subnet?.toString(), bad]));
      expect([...invalid.keys()].sort()).toEqual(['198.19.30.0/24', '198.19.31.0/24', '198.19.32.0/24', '198.19.33.0/24', '198.19.40.0/24']);
      for (const bad of listing.invalid) expect(bad.code).toBe('too_large');
      expect(invalid.get('198.19.40.0/24')).toMatchObject({ key: `${prefix}/subnets/198.19.40.0-24`, reason: expect.stringMatching(/larger than an etcd response/) });
      expect(invalid.get('198.19.30.0/24')!.reason).toMatch(/600\d{3} bytes; the limit is 4096/);
    } finally {
      r.close();
    }
  });

  it('keys created after a revision: only those that exist, in pages past 1,000, however old keys were rewritten since', async () => {
    const prefix = freshPrefix();
    const name = (i: number) => new Ip4Net(Ip4Net.parse('198.19.0.0/16').ip + i * 16, 28).toKey();
    const putAll = async (from: number, to: number) => {
      for (let i = from; i < to; i += 250) {
        await Promise.all(Array.from({ length: Math.min(250, to - i) }, (_, j) => client.put(`${prefix}/subnets/${name(i + j)}`).value(value(i + j))));
      }
    };
    await putAll(0, 500);
    const r = registry(prefix);
    try {
      const { revision } = await r.listLeases();
      await putAll(500, 1550);
      await client.put(`${prefix}/subnets/${name(7)}`).value(value(9)); // an old key rewritten: created before
      await client.delete().key(`${prefix}/subnets/${name(600)}`); // a new key gone again
      await client.put(`${prefix}/subnets/198.19.250.0-24&junk`).value(value(1)); // a new key that is no lease
      const since = await r.listLeasesCreatedAfter(revision);
      const got = since.records.map((rec) => rec.subnet.toKey());
      expect(got.length).toBe(1049);
      expect(new Set(got)).toEqual(new Set(Array.from({ length: 1050 }, (_, k) => name(500 + k)).filter((n) => n !== name(600))));
      expect(since.invalid.map((bad) => bad.key)).toEqual([`${prefix}/subnets/198.19.250.0-24&junk`]);
      for (const rec of since.records) expect(BigInt(rec.createRevision)).toBeGreaterThan(BigInt(revision));
    } finally {
      r.close();
    }
  });

  it('deletes a key only if it is unchanged since the revision given', async () => {
    const prefix = freshPrefix();
    const key = `${prefix}/subnets/198.19.3.0-24`;
    await client.put(key).value(value(1));
    const r = registry(prefix);
    try {
      const [first] = (await r.listLeases()).records;
      await client.put(key).value(value(2));
      expect(await r.deleteLeaseIf(key, first!.modRevision)).toBe(false);
      expect(await client.get(key).string()).toBe(value(2));
      const [now] = (await r.listLeases()).records;
      expect(await r.deleteLeaseIf(key, now!.modRevision)).toBe(true);
      expect(await client.get(key).string()).toBeNull();
      expect(await r.deleteLeaseIf(key, now!.modRevision)).toBe(false);
    } finally {
      r.close();
    }
  });
});

describe('watching', () => {
  it('a watch response of more than 4 MiB is delivered whole (a watch resuming from before four 1.2 MB values)', async () => {
    const prefix = freshPrefix();
    const r = registry(prefix);
    const seen: LeaseChange[] = [];
    try {
      const from = (BigInt((await r.listLeases()).revision) + 1n).toString();
      // Already in history when the watch starts: etcd sends the backlog in one response.
      for (let i = 0; i < 4; i++) await client.put(`${prefix}/subnets/198.19.${60 + i}.0-24`).value(HUGE);
      await client.put(`${prefix}/subnets/198.19.64.0-24`).value(value(1));
      const watch = await r.watchLeases(from, { onChanges: (c) => seen.push(...c), onReset: () => undefined });
      try {
        expect(await waitFor(() => seen.length === 5, 15_000)).toBe(true);
        expect(seen.filter((c) => c.type === 'invalid')).toHaveLength(4);
        expect(seen.find((c) => c.type === 'put')).toMatchObject({ record: { key: `${prefix}/subnets/198.19.64.0-24` } });
      } finally {
        await watch.stop();
      }
    } finally {
      r.close();
    }
  });
});
