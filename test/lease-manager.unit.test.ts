// The lease manager's logic on the in-memory store with a clock the test moves: allocation, races,
// reuse, reservations, renewal, loss and re-claim, resync after compaction, invalid leases and bursts.
// No root, no etcd, no namespaces: the whole file runs in well under a second.
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../src/common/log.js';
import { capturingLogger } from './harness/log-capture.js';
import { metricsRegistry } from '../src/common/metrics.js';
import { chooseSubnet, NetworkFullError } from '../src/subnet/allocation.js';
import { parseNetworkConfig } from '../src/subnet/config.js';
import { Ip4Net } from '../src/common/ip4.js';
import { type Lease, type LeaseEvent, encodeLeaseAttrs } from '../src/subnet/lease.js';
import { LeaseManager, type LeaseManagerOptions } from '../src/subnet/manager.js';
import { MemoryLeaseStore } from '../src/subnet/memory-store.js';
import { ManualClock, settle } from './harness/manual-clock.js';

const NETWORK = parseNetworkConfig('{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}');
const SMALL = parseNetworkConfig('{"Network":"198.19.0.0/26","Backend":{"Type":"vxlan"}}'); // three /28s

const vxlan = (publicIP: string, mac = '02:00:00:00:00:01') => ({
  publicIP,
  publicIPv6: null,
  backend: { type: 'vxlan' as const, vtep: { vni: 1, mac }, vtepV6: null },
});
const value = (publicIP: string, mac = '02:00:00:00:00:99') => encodeLeaseAttrs(vxlan(publicIP, mac));

/** A seeded source of numbers in [0, 1), so random choices repeat from run to run. */
function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}


class Recorder {
  own: Lease[] = [];
  changes: ('claimed' | 'moved')[] = [];
  batches: LeaseEvent[][] = [];
  remote = new Map<string, Lease>();
  listener = {
    onOwnLease: async (lease: Lease, change: 'claimed' | 'moved') => {
      this.own.push(lease);
      this.changes.push(change);
    },
    onLeaseEvents: async (events: LeaseEvent[]) => {
      this.batches.push(events);
      for (const e of events) {
        if (e.type === 'added') this.remote.set(e.lease.subnet.toString(), e.lease);
        else this.remote.delete(e.lease.subnet.toString());
      }
    },
  };
}

const managers: LeaseManager[] = [];
afterEach(async () => {
  for (const m of managers.splice(0)) await m.stop();
});

function setup(opts: { clock?: ManualClock; store?: MemoryLeaseStore } = {}) {
  const clock = opts.clock ?? new ManualClock();
  const store = opts.store ?? new MemoryLeaseStore(clock);
  const make = (publicIP: string, overrides: Partial<LeaseManagerOptions> = {}) => {
    const m = new LeaseManager({
      store,
      network: NETWORK,
      attrs: vxlan(publicIP),
      ttlSeconds: 3600,
      renewMarginSeconds: 60,
      previousSubnet: null,
      log: silentLogger,
      clock,
      random: seeded(publicIP.split('.').reduce((a, o) => a * 7 + Number(o), 1)),
      ...overrides,
    });
    managers.push(m);
    return m;
  };
  return { clock, store, make };
}

describe('choosing a subnet (pure)', () => {
  const listing = (names: string[]) => ({
    records: names.map((n, i) => ({
      key: `/p/${n}`, subnet: Ip4Net.fromKey(n), attrs: vxlan(`198.18.0.${100 + i}`), leaseId: '1', modRevision: '2', createRevision: '2',
    })),
    invalid: [],
    revision: '3',
  });

  it('takes over a lease carrying our PublicIP, else the preferred subnet if free, else a random free one', () => {
    const base = { network: SMALL, preferred: null, avoid: null, random: () => 0 };
    const l = listing(['198.19.0.16-28']);
    expect(chooseSubnet(l, { ...base, publicIP: '198.18.0.100' })).toMatchObject({ kind: 'take-over' });
    expect(chooseSubnet(l, { ...base, publicIP: '198.18.0.1', preferred: Ip4Net.parse('198.19.0.48/28') })).toMatchObject({ kind: 'create', preferred: true });
    // The preferred one is taken: a random free one; random() = 0.99 picks the last free subnet.
    const pick = chooseSubnet(l, { ...base, publicIP: '198.18.0.1', preferred: Ip4Net.parse('198.19.0.16/28'), random: () => 0.99 });
    expect(pick).toMatchObject({ kind: 'create', preferred: false });
    expect(pick.kind === 'create' && pick.subnet.toString()).toBe('198.19.0.48/28');
    expect(() => chooseSubnet(listing(['198.19.0.16-28', '198.19.0.32-28', '198.19.0.48-28']), { ...base, publicIP: '198.18.0.1' })).toThrow(NetworkFullError);
  });

  it('a key with an unusable value occupies its subnet; a key every node refuses (wrong size, outside) occupies nothing', () => {
    const bad = (name: string, code: string) => ({ key: `/p/${name}`, code, reason: 'x', subnet: Ip4Net.fromKey(name), modRevision: '2' });
    const l = { records: [], invalid: [bad('198.19.0.16-28', 'bad_json'), bad('198.19.0.0-26', 'wrong_prefix_len'), bad('198.19.0.0-16', 'wrong_prefix_len')], revision: '3' };
    const pick = chooseSubnet(l, { network: SMALL, publicIP: '198.18.0.1', preferred: null, avoid: null, random: () => 0 });
    expect(pick.kind === 'create' && pick.subnet.toString()).toBe('198.19.0.32/28');
    const full = { ...l, invalid: [...l.invalid, bad('198.19.0.32-28', 'bad_json'), bad('198.19.0.48-28', 'bad_public_ip')] };
    expect(() => chooseSubnet(full, { network: SMALL, publicIP: '198.18.0.1', preferred: null, avoid: null, random: () => 0 })).toThrow(NetworkFullError);
  });
});

describe('claiming', () => {
  it('20 nodes claiming at once get 20 distinct subnets, each bound to an expiring lease', async () => {
    const { clock, store, make } = setup();
    // Losers of a race wait a moment (on the clock) before choosing again.
    const leases = await clock.until(Promise.all(Array.from({ length: 20 }, (_, i) => make(`198.18.0.${i + 1}`).start(new Recorder().listener))));
    expect(new Set(leases.map((l) => l.subnet.toString())).size).toBe(20);
    for (const l of leases) expect(store.get(l.subnet.toKey())?.leaseId).not.toBeNull();
  });

  it('each node learns every other node, whichever started first', async () => {
    const { clock, make } = setup();
    const recs = Array.from({ length: 5 }, () => new Recorder());
    await clock.until(Promise.all(recs.map((r, i) => make(`198.18.0.${i + 1}`).start(r.listener))));
    await settle();
    for (const r of recs) expect(r.remote.size).toBe(4);
  });

  it('a restarted node reuses the lease carrying its PublicIP; a new one prefers its previous subnet', async () => {
    const { store, make } = setup();
    const first = await make('198.18.0.3').start(new Recorder().listener);
    await managers.pop()!.stop();
    const again = await make('198.18.0.3').start(new Recorder().listener);
    expect(again.subnet.equals(first.subnet)).toBe(true);
    // Its old etcd lease was replaced by a fresh one: only one is bound to the key.
    expect(store.get(first.subnet.toKey())?.leaseId).not.toBeNull();
    const prev = Ip4Net.parse('198.19.77.0/24');
    expect((await make('198.18.0.4', { previousSubnet: prev }).start(new Recorder().listener)).subnet.equals(prev)).toBe(true);
  });

  it('honours reservations: never taken by another node, kept without expiry by the node they name', async () => {
    const { store, make } = setup();
    store.put('198.19.0.16-28', value('198.18.0.200'));
    store.put('198.19.0.32-28', value('198.18.0.201'));
    const other = await make('198.18.0.1', { network: SMALL }).start(new Recorder().listener);
    expect(other.subnet.toString()).toBe('198.19.0.48/28');
    const reserved = await make('198.18.0.200', { network: SMALL }).start(new Recorder().listener);
    expect(reserved.subnet.toString()).toBe('198.19.0.16/28');
    expect(reserved.expiration).toBeNull();
    expect(store.get('198.19.0.16-28')?.leaseId).toBeNull();
    await expect(make('198.18.0.9', { network: SMALL }).start(new Recorder().listener)).rejects.toThrow(/no free subnet: all 3 \/28 subnets/);
  });
});

describe('renewal and loss', () => {
  it('renews before expiry, by the margin, for as long as it runs', async () => {
    const { clock, store, make } = setup();
    const lease = await make('198.18.0.1', { ttlSeconds: 600, renewMarginSeconds: 60 }).start(new Recorder().listener);
    const m = managers[0]!;
    await clock.advance(539_000);
    expect(m.stats()['renewals']).toBe(0);
    await clock.advance(2_000);
    expect(m.stats()['renewals']).toBe(1);
    for (let i = 0; i < 5; i++) await clock.advance(540_000);
    expect(m.stats()['renewals']).toBe(6);
    // Never lapsed: the key is still there, on the same etcd lease.
    expect(store.get(lease.subnet.toKey())).toBeDefined();
    expect(m.stats()['reclaims']).toBe(0);
  });

  it('keeps retrying renewal while the store is unreachable, and re-claims the same subnet if the lease ran out meanwhile', async () => {
    const { clock, store, make } = setup();
    const rec = new Recorder();
    const lease = await make('198.18.0.1', { ttlSeconds: 600, renewMarginSeconds: 60 }).start(rec.listener);
    const m = managers[0]!;
    store.setAvailable(false);
    await clock.advance(660_000); // past expiry: retries failed all along
    expect(m.stats()['renewals']).toBe(0);
    expect(store.get(lease.subnet.toKey())).toBeUndefined(); // the store expired it
    store.setAvailable(true);
    await clock.advance(31_000);
    expect(m.stats()['reclaims']).toBe(1);
    expect(m.ownLease?.subnet.equals(lease.subnet)).toBe(true);
    expect(store.get(lease.subnet.toKey())).toBeDefined();
    expect(rec.changes).toEqual(['claimed']); // same subnet: no move, the env file stays
  });

  it('our key deleted: claimed again at once, same subnet', async () => {
    const { store, make } = setup();
    const rec = new Recorder();
    const lease = await make('198.18.0.1').start(rec.listener);
    store.deleteKey(lease.subnet.toKey());
    await settle();
    expect(managers[0]!.stats()['reclaims']).toBe(1);
    expect(store.get(lease.subnet.toKey())?.value).toContain('"PublicIP":"198.18.0.1"');
    expect(rec.changes).toEqual(['claimed']);
  });

  it('our key taken by another node: moves to a new subnet, the old one becomes a peer', async () => {
    const { store, make } = setup();
    const rec = new Recorder();
    const lease = await make('198.18.0.1').start(rec.listener);
    store.put(lease.subnet.toKey(), value('198.18.0.72'), store.grant(3600));
    await settle();
    expect(rec.changes).toEqual(['claimed', 'moved']);
    const moved = rec.own[1]!;
    expect(moved.subnet.equals(lease.subnet)).toBe(false);
    expect(rec.remote.get(lease.subnet.toString())?.attrs.publicIP).toBe('198.18.0.72');
    expect(store.get(moved.subnet.toKey())?.value).toContain('"PublicIP":"198.18.0.1"');
  });
});

describe('following changes', () => {
  it('a burst of 1,000 leases delivered in one watch response reaches the listener whole', async () => {
    const { store, make } = setup();
    const rec = new Recorder();
    const network = parseNetworkConfig('{"Network":"198.19.0.0/16","SubnetLen":26,"Backend":{"Type":"vxlan"}}');
    await make('198.18.0.1', { network }).start(rec.listener);
    const own = managers[0]!.ownLease!.subnet;
    const items = [];
    for (let i = 0; i < 1100 && items.length < 1000; i++) {
      const sn = new Ip4Net(Ip4Net.parse('198.19.0.0/16').ip + (i + 1) * 64, 26);
      if (sn.equals(own)) continue;
      items.push({ name: sn.toKey(), value: value(`198.18.${1 + (i >> 8)}.${i & 255}`) });
    }
    store.putMany(items);
    await settle();
    expect(rec.remote.size).toBe(1000);
  });

  it('after a compaction the watch resets: listed again, only the differences are emitted', async () => {
    const { store, make } = setup();
    const rec = new Recorder();
    store.put('198.19.1.0-24', value('198.18.0.11'));
    store.put('198.19.2.0-24', value('198.18.0.12'));
    await make('198.18.0.1', { previousSubnet: Ip4Net.parse('198.19.9.0/24') }).start(rec.listener);
    const m = managers[0]!;
    store.setAvailable(false);
    store.deleteKey('198.19.1.0-24');
    store.put('198.19.3.0-24', value('198.18.0.13'));
    store.compact();
    const before = rec.batches.length;
    store.setAvailable(true);
    await settle();
    expect(m.stats()['watchResets']).toBe(1);
    expect([...rec.remote.keys()].sort()).toEqual(['198.19.2.0/24', '198.19.3.0/24']);
    const resyncEvents = rec.batches.slice(before).flat();
    expect(resyncEvents.map((e) => `${e.type} ${e.lease.subnet}`).sort()).toEqual(['added 198.19.3.0/24', 'removed 198.19.1.0/24']);
    // The watch was re-created: later changes still arrive.
    store.put('198.19.4.0-24', value('198.18.0.14'));
    await settle();
    expect(rec.remote.has('198.19.4.0/24')).toBe(true);
  });

  it('refuses invalid leases alone, counts them by reason once per change, and warns once per listing', async () => {
    const { store, make } = setup();
    const { log, lines } = capturingLogger();
    for (let i = 0; i < 300; i++) store.put(`junk-${i}`, value('198.18.0.50'));
    store.put('198.19.5.0-24', '{not json');
    store.put('198.19.6.0-25', value('198.18.0.51')); // wrong size
    store.put('198.20.7.0-24', value('198.18.0.52')); // outside the network
    store.put('198.19.8.0-24', value('198.18.0.53')); // good
    const rec = new Recorder();
    const m = make('198.18.0.1', { log, previousSubnet: Ip4Net.parse('198.19.9.0/24') });
    const before = await metricsRegistry.getSingleMetricAsString('flannel_leases_invalid_total');
    await m.start(rec.listener);
    expect([...rec.remote.keys()]).toEqual(['198.19.8.0/24']);
    const warnings = lines.filter((l) => Number(l['level']) >= 40);
    expect(warnings.length).toBe(1);
    expect(warnings[0]).toMatchObject({ invalid: 303, newlyInvalid: 303, byReason: { bad_key: 300, wrong_prefix_len: 1, outside_network: 1 } });
    expect(m.invalidLeasesByReason()).toMatchObject({ bad_key: 300, wrong_prefix_len: 1, outside_network: 1 });
    const after = await metricsRegistry.getSingleMetricAsString('flannel_leases_invalid_total');
    expect(after).not.toBe(before);
    expect(after).toMatch(/flannel_leases_invalid_total\{reason="bad_key"\} \d+/);

    // A key that overlaps ours is refused with its own message; a good lease turned bad is removed.
    const own = m.ownLease!.subnet;
    store.put(new Ip4Net(own.ip, 23).toKey(), value('198.18.0.54'));
    store.put('198.19.8.0-24', '{"PublicIP":"not an address"}');
    await settle();
    expect(rec.remote.size).toBe(0);
    expect(lines.some((l) => /overlaps our own subnet/.test(String(l['msg'])))).toBe(true);
    // Listing again (a reset) reports nothing new: the refused keys did not change.
    const count = lines.length;
    const resets = m.stats()['watchResets']!;
    store.setAvailable(false);
    store.put('198.19.10.0-24', value('198.18.0.55'));
    store.compact();
    store.setAvailable(true);
    await settle();
    expect(m.stats()['watchResets']).toBe(resets + 1);
    expect(rec.remote.has('198.19.10.0/24')).toBe(true);
    expect(lines.slice(count).filter((l) => Number(l['level']) >= 40 && /invalid leases/.test(String(l['msg'])))).toEqual([]);
  });
});
