// The lease manager's logic on the in-memory store with a clock the test moves: allocation, races,
// reuse, reservations, renewal, loss and re-claim, resync after compaction, invalid leases and bursts,
// and a node giving way when its key is the newer of two naming one subnet.
// No root, no etcd, no namespaces: the whole file runs in well under a second.
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../src/common/log.js';
import { metricsRegistry } from '../src/common/metrics.js';
import { chooseSubnet, NetworkFullError, PublicIpInUseError } from '../src/subnet/allocation.js';
import { parseNetworkConfig } from '../src/subnet/config.js';
import { Ip4Net } from '../src/common/ip4.js';
import { Ip6Net } from '../src/common/ip6.js';
import { type Lease, type LeaseAttrs, type LeaseEvent, encodeLeaseAttrs } from '../src/subnet/lease.js';
import { type WrittenLease, leaseKeyName } from '../src/subnet/lease-store.js';
import { LeaseManager, type LeaseManagerOptions } from '../src/subnet/manager.js';
import { MemoryLeaseStore } from '../src/subnet/memory-store.js';
import { ListingGate } from './harness/listing-gate.js';
import { capturingLogger } from './harness/log-capture.js';
import { ManualClock, settle } from './harness/manual-clock.js';

const NETWORK = parseNetworkConfig('{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}');
const SMALL = parseNetworkConfig('{"Network":"198.19.0.0/26","Backend":{"Type":"vxlan"}}'); // three /28s

/** Each node's VTEP MAC is its own (two leases with one MAC are refused): derived from its PublicIP. */
const macOf = (publicIP: string) => `02:00:${publicIP.split('.').map((o) => Number(o).toString(16).padStart(2, '0')).join(':')}`;
const vxlan = (publicIP: string, mac = macOf(publicIP)) => ({
  publicIP,
  publicIPv6: null,
  backend: { type: 'vxlan' as const, vtep: { vni: 1, mac }, vtepV6: null },
});
const value = (publicIP: string, mac = macOf(publicIP)) => encodeLeaseAttrs(vxlan(publicIP, mac));

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

describe('one PublicIP, one live node', () => {
  const ID_A = 'a'.repeat(32);
  const ID_B = 'b'.repeat(32);
  const withId = (publicIP: string, nodeIdentity: string) => ({ ...vxlan(publicIP), nodeIdentity });

  it('chooses only a lease with our identity or none; another identity on our PublicIP is a conflict, not a subnet to take', () => {
    const rec = (subnet: string, nodeIdentity?: string) => ({
      key: `/p/${subnet}`, subnet: Ip4Net.fromKey(subnet), attrs: { ...vxlan('198.18.0.5'), ...(nodeIdentity ? { nodeIdentity } : {}) }, leaseId: '1', modRevision: '2', createRevision: '2',
    });
    const req = { network: SMALL, publicIP: '198.18.0.5', nodeIdentity: ID_A, preferred: null, avoid: null, random: () => 0 };
    const pick = (records: ReturnType<typeof rec>[], extra = {}) => chooseSubnet({ records, invalid: [], revision: '3' }, { ...req, ...extra });
    expect(pick([rec('198.19.0.16-28', ID_A)])).toMatchObject({ kind: 'take-over', record: { key: '/p/198.19.0.16-28' } });
    // Written by upstream, an older version, or an operator's reservation: ours at start, not after ours was taken.
    expect(pick([rec('198.19.0.16-28')])).toMatchObject({ kind: 'take-over' });
    expect(() => pick([rec('198.19.0.16-28')], { unmarkedIsOurs: false })).toThrow(PublicIpInUseError);
    const err = (() => {
      try {
        pick([rec('198.19.0.16-28', ID_B)]);
      } catch (e) {
        return e as Error;
      }
      return null;
    })();
    expect(err).toBeInstanceOf(PublicIpInUseError);
    expect(err!.message).toMatch(/public IP 198\.18\.0\.5 is in use by another node: it holds 198\.19\.0\.16\/28 .*node identity b{32}/);
    // Ours among them: taken over; the other is a conflict for whoever holds it, not for us.
    expect(pick([rec('198.19.0.16-28', ID_B), rec('198.19.0.32-28', ID_A)])).toMatchObject({ kind: 'take-over', record: { key: '/p/198.19.0.32-28' } });
  });

  it('a second node with our PublicIP takes no lease and writes nothing; the first keeps its subnet, also across a restart', async () => {
    const { store, make } = setup();
    const first = await make('198.18.0.5', { attrs: withId('198.18.0.5', ID_A) }).start(new Recorder().listener);
    const revision = store.currentRevision;
    const second = make('198.18.0.5', { attrs: withId('198.18.0.5', ID_B) });
    await expect(second.start(new Recorder().listener)).rejects.toThrow(PublicIpInUseError);
    expect(store.currentRevision).toBe(revision);
    expect(store.get(first.subnet.toKey())?.value).toContain(`"NodeIdentity":"${ID_A}"`);
    await managers[0]!.stop();
    const again = await make('198.18.0.5', { attrs: withId('198.18.0.5', ID_A) }).start(new Recorder().listener);
    expect(again.subnet.equals(first.subnet)).toBe(true);
  });

  it('two nodes with one PublicIP creating keys at the same instant: the newer deletes its key and takes no lease; the older keeps its own', async () => {
    const { clock, store, make } = setup();
    // Both list before either creates: neither choice sees the other's key.
    new ListingGate(2).hold(store);
    const cap = capturingLogger();
    const [ra, rb] = [new Recorder(), new Recorder()];
    const a = make('198.18.0.5', { attrs: withId('198.18.0.5', ID_A) });
    const b = make('198.18.0.5', { attrs: withId('198.18.0.5', ID_B), log: cap.log, random: () => 0.5 });
    const [la, lb] = await clock.until(Promise.allSettled([a.start(ra.listener), b.start(rb.listener)]));
    expect(la.status).toBe('fulfilled');
    expect(lb.status).toBe('rejected');
    expect((lb as PromiseRejectedResult).reason).toBeInstanceOf(PublicIpInUseError);
    expect(String((lb as PromiseRejectedResult).reason.message)).toMatch(/public IP 198\.18\.0\.5 is in use by another node: it holds .*node identity a{32}/);
    expect(b.stats()['gaveWay']).toBe(1);
    expect(a.stats()['gaveWay']).toBe(0);
    expect(cap.lines.some((l) => /with our public IP created its key just before ours/.test(String(l['msg'])))).toBe(true);
    // B wrote nothing on its node; the store holds A's key alone, as A wrote it.
    expect(rb.own).toEqual([]);
    const held = (await store.listLeases()).records;
    expect(held.map((r) => r.attrs.nodeIdentity)).toEqual([ID_A]);
    expect(held[0]!.subnet.equals((la as PromiseFulfilledResult<Lease>).value.subnet)).toBe(true);
    expect(held[0]!.modRevision).toBe(held[0]!.createRevision);
    // Started again, B finds A's key in its listing and writes nothing.
    const revision = store.currentRevision;
    await expect(make('198.18.0.5', { attrs: withId('198.18.0.5', ID_B) }).start(new Recorder().listener)).rejects.toThrow(PublicIpInUseError);
    expect(store.currentRevision).toBe(revision);
  });

  it('an upstream node with our PublicIP taking our key while we run: we stand aside instead of taking it back, with bounded writes', async () => {
    const { clock, store, make } = setup();
    const { log, lines } = capturingLogger();
    const lease = await make('198.18.0.5', { attrs: withId('198.18.0.5', ID_A), log }).start(new Recorder().listener);
    // What upstream writes when it takes over "its" lease: our PublicIP, no identity.
    store.put(lease.subnet.toKey(), value('198.18.0.5', '02:00:00:00:00:77'), store.grant(3600));
    const revision = store.currentRevision;
    await settle();
    await clock.advance(120_000);
    expect(store.currentRevision).toBe(revision);
    expect(store.get(lease.subnet.toKey())?.value).not.toContain(ID_A);
    expect(lines.some((l) => l['msg'] === 'cannot claim a subnet' && /public IP 198\.18\.0\.5 is in use by another node/.test(String(l['err'])))).toBe(true);
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

  it('changes waiting for a busy backend are folded per key: a key rewritten 2,000 times is one entry, and a new lease behind it comes in the next batch', async () => {
    const { store, make } = setup();
    let release: () => void = () => undefined;
    let busy: Promise<void> | null = null;
    const batches: LeaseEvent[][] = [];
    const m = make('198.18.0.1', { previousSubnet: Ip4Net.parse('198.19.9.0/24') });
    await m.start({
      onOwnLease: async () => undefined,
      onLeaseEvents: async (events) => {
        batches.push(events);
        await busy;
      },
    });
    store.put('198.19.1.0-24', value('198.18.0.11', '02:00:00:00:00:11'));
    await settle();
    // The backend is now slow: every change made meanwhile waits.
    busy = new Promise((r) => (release = r));
    store.put('198.19.2.0-24', value('198.18.0.12', '02:00:00:00:00:12'));
    await settle();
    const before = batches.length;
    for (let i = 0; i < 2000; i++) {
      store.put('198.19.1.0-24', value(`198.18.0.${20 + (i % 2)}`, '02:00:00:00:00:11'));
      if (i % 50 === 0) await settle(1); // many watch responses, not one
    }
    store.put('198.19.3.0-24', value('198.18.0.13', '02:00:00:00:00:13'));
    await settle();
    expect(m.stats()['pendingChanges']).toBe(2);
    busy = null;
    release();
    await settle();
    const after = batches.slice(before);
    expect(after).toHaveLength(1);
    expect(after[0]!.map((e) => `${e.type} ${e.lease.subnet} ${e.lease.attrs.publicIP}`).sort()).toEqual(['added 198.19.1.0/24 198.18.0.21', 'added 198.19.3.0/24 198.18.0.13']);
    expect(m.stats()['pendingChanges']).toBe(0);
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

describe('two keys naming one subnet: the newer claimant gives way', () => {
  const DUAL = parseNetworkConfig('{"Network":"198.19.0.0/16","EnableIPv6":true,"IPv6Network":"2001:2:1::/48","Backend":{"Type":"host-gw"}}');
  const V4 = parseNetworkConfig('{"Network":"198.19.0.0/16","Backend":{"Type":"host-gw"}}');
  const hostgw = (i: number, dual = true): LeaseAttrs => ({ publicIP: `198.18.0.${i}`, publicIPv6: dual ? `2001:2::${i.toString(16)}` : null, backend: { type: 'host-gw' } });
  /** Numbers taken in turn from `values`, again and again: exactly which free subnets a manager picks. */
  const cycle = (...values: number[]) => {
    let k = 0;
    return () => values[k++ % values.length]!;
  };
  const dual = (i: number, extra: Partial<LeaseManagerOptions> = {}): Partial<LeaseManagerOptions> => ({ network: DUAL, attrs: hostgw(i), random: () => 0, ...extra });
  const errors = (lines: Record<string, unknown>[]) => lines.filter((l) => Number(l['level']) >= 50);
  const nameOf = (l: Lease) => leaseKeyName(l.subnet, l.ipv6Subnet ?? null);
  const records = async (store: MemoryLeaseStore) => new Map((await store.listLeases()).records.map((r) => [r.key.slice(r.key.lastIndexOf('/') + 1), r]));

  it('two nodes claiming at once pick one IPv6 subnet: the newer deletes its key and claims again before writing anything; the older keeps its key', async () => {
    const { clock, store, make } = setup();
    new ListingGate(2).hold(store);
    const cap = capturingLogger();
    const [ra, rb] = [new Recorder(), new Recorder()];
    // Both take the lowest free IPv6 subnet; B's IPv4 subnet is another (random() = 0.5).
    const a = make('198.18.0.1', dual(1));
    const b = make('198.18.0.2', dual(2, { random: cycle(0, 0.5), log: cap.log }));
    const [la, lb] = await clock.until(Promise.all([a.start(ra.listener), b.start(rb.listener)]));
    expect(b.stats()['gaveWay'], 'the two keys did name one IPv6 subnet').toBe(1);
    expect(a.stats()['gaveWay']).toBe(0);
    expect(la.ipv6Subnet!.toString()).toBe('2001:2:1:1::/64');
    expect(lb.ipv6Subnet!.equals(la.ipv6Subnet!)).toBe(false);
    // Quiet: nothing was written before B gave way, so its env file is written once, with the final subnets.
    expect(rb.changes).toEqual(['claimed']);
    expect(nameOf(rb.own[0]!)).toBe(nameOf(lb));
    expect(errors(cap.lines)).toEqual([]);
    expect(cap.lines.some((l) => /older key/.test(String(l['msg'])) && l['olderKey'] === `/coreos.com/network/subnets/${nameOf(la)}`)).toBe(true);
    // The store holds A's key as A wrote it, and B's new one; B's first key is gone.
    const held = await records(store);
    expect([...held.keys()].sort()).toEqual([nameOf(la), nameOf(lb)].sort());
    expect(held.get(nameOf(la))!.modRevision).toBe(held.get(nameOf(la))!.createRevision);
    await settle();
    expect(ra.remote.get(lb.subnet.toString())?.ipv6Subnet?.equals(lb.ipv6Subnet!)).toBe(true);
    expect(rb.remote.get(la.subnet.toString())?.ipv6Subnet?.equals(la.ipv6Subnet!)).toBe(true);
    expect(ra.changes).toEqual(['claimed']);
  });

  it.each(['the IPv4-only key', 'the dual-stack key'])('an IPv4-only key and a dual-stack key for one IPv4 subnet, created at once: %s is older and kept, the other node gives way', async (first) => {
    const { clock, store, make } = setup();
    new ListingGate(2).hold(store);
    // An upstream node of an IPv4-only config (or an old key) and a dual-stack node: both take 198.19.1.0/24.
    const v4only = make('198.18.0.1', { network: V4, attrs: hostgw(1, false), random: () => 0 });
    const both = make('198.18.0.2', dual(2));
    const [older, newer] = first === 'the IPv4-only key' ? [v4only, both] : [both, v4only];
    const [lo, ln] = await clock.until(Promise.all([older.start(new Recorder().listener), newer.start(new Recorder().listener)]));
    expect([older.stats()['gaveWay'], newer.stats()['gaveWay']]).toEqual([0, 1]);
    expect(lo.subnet.toString()).toBe('198.19.1.0/24');
    expect(ln.subnet.equals(lo.subnet)).toBe(false);
    const held = await records(store);
    expect([...held.keys()].sort()).toEqual([nameOf(lo), nameOf(ln)].sort());
    // The dual-stack node keeps the IPv6 subnet it had chosen when only its IPv4 subnet was taken.
    if (newer === both) expect(ln.ipv6Subnet!.toString()).toBe('2001:2:1:1::/64');
  });

  it.each(['through the watch', 'through the listing after a watch reset'])(
    'an older key that becomes usable after our claim is noticed %s: we give way loudly, keeping our IPv4 subnet',
    async (how) => {
      const { clock, store, make } = setup();
      const cap = capturingLogger();
      const rec = new Recorder();
      // Another writer's key for the same IPv6 subnet lands between our listing and our create, with a
      // value nobody can use: it names a subnet, but no node routes it, so our claim stands.
      const rival = '198.19.7.0-24&2001:2:1:1::-64';
      const rivalLease = store.grant(3600);
      new ListingGate(1, () => store.put(rival, '{"PublicIP":', rivalLease)).hold(store);
      const m = make('198.18.0.2', dual(2, { log: cap.log }));
      const lease = await clock.until(m.start(rec.listener));
      expect(nameOf(lease)).toBe('198.19.1.0-24&2001:2:1:1::-64');
      expect(m.stats()['gaveWay']).toBe(0);
      // Its value is fixed: an older key (it was created before ours) now claims our IPv6 subnet on every node.
      if (how === 'through the watch') {
        store.put(rival, encodeLeaseAttrs(hostgw(7)), rivalLease);
      } else {
        store.setAvailable(false);
        store.put(rival, encodeLeaseAttrs(hostgw(7)), rivalLease);
        store.compact();
        store.setAvailable(true);
      }
      await clock.advance(1000);
      if (how !== 'through the watch') expect(m.stats()['watchResets']).toBe(1);
      expect(m.stats()['gaveWay']).toBe(1);
      expect(rec.changes).toEqual(['claimed', 'moved']);
      const moved = rec.own[1]!;
      expect(moved.subnet.toString()).toBe('198.19.1.0/24');
      expect(moved.ipv6Subnet!.toString()).toBe('2001:2:1:2::/64');
      const loud = errors(cap.lines);
      expect(loud).toHaveLength(1);
      expect(loud[0]).toMatchObject({ oldSubnet: '198.19.1.0/24', newSubnet: '198.19.1.0/24', oldIpv6Subnet: '2001:2:1:1::/64', newIpv6Subnet: '2001:2:1:2::/64' });
      expect(String(loud[0]!['msg'])).toMatch(/must be restarted/);
      expect([...(await records(store)).keys()].sort()).toEqual([rival, nameOf(moved)].sort());
      // The older key is a peer now that it no longer overlaps our own subnets.
      expect(rec.remote.get('198.19.7.0/24')?.attrs.publicIP).toBe('198.18.0.7');
    },
  );

  it('a restart keeps the older key; the newer key\'s node, restarted, gives way loudly, as its env file named the subnet', async () => {
    const { clock, store, make } = setup();
    // What a race left behind while the newer key's node was down: two keys naming 2001:2:1:5::/64.
    store.put('198.19.1.0-24&2001:2:1:5::-64', encodeLeaseAttrs(hostgw(1)), store.grant(3600));
    store.put('198.19.2.0-24&2001:2:1:5::-64', encodeLeaseAttrs(hostgw(2)), store.grant(3600));
    const before = await records(store);
    const ra = new Recorder();
    const a = make('198.18.0.1', dual(1, { previousSubnet: Ip4Net.parse('198.19.1.0/24'), previousIpv6Subnet: Ip6Net.parse('2001:2:1:5::/64') }));
    const la = await clock.until(a.start(ra.listener));
    expect(nameOf(la)).toBe('198.19.1.0-24&2001:2:1:5::-64');
    expect(a.stats()['gaveWay']).toBe(0);
    const afterA = await records(store);
    // A took its key over (a fresh value and etcd lease, the same creation); B's key is untouched.
    expect(afterA.get('198.19.1.0-24&2001:2:1:5::-64')!.createRevision).toBe(before.get('198.19.1.0-24&2001:2:1:5::-64')!.createRevision);
    expect(afterA.get('198.19.2.0-24&2001:2:1:5::-64')).toEqual(before.get('198.19.2.0-24&2001:2:1:5::-64'));

    const cap = capturingLogger();
    const rb = new Recorder();
    const b = make('198.18.0.2', dual(2, { previousSubnet: Ip4Net.parse('198.19.2.0/24'), previousIpv6Subnet: Ip6Net.parse('2001:2:1:5::/64'), log: cap.log }));
    const lb = await clock.until(b.start(rb.listener));
    expect(b.stats()['gaveWay']).toBe(1);
    expect(lb.subnet.toString()).toBe('198.19.2.0/24');
    expect(lb.ipv6Subnet!.toString()).toBe('2001:2:1:1::/64');
    expect(rb.changes).toEqual(['claimed']);
    // Pods of B's previous run hold addresses of 2001:2:1:5::/64: said loudly, once the env file names the new one.
    const loud = errors(cap.lines);
    expect(loud).toHaveLength(1);
    expect(loud[0]).toMatchObject({ oldSubnet: '198.19.2.0/24', newSubnet: '198.19.2.0/24', oldIpv6Subnet: '2001:2:1:5::/64', newIpv6Subnet: '2001:2:1:1::/64' });
    await settle();
    expect(a.ownLease && nameOf(a.ownLease)).toBe('198.19.1.0-24&2001:2:1:5::-64');
    expect(ra.changes).toEqual(['claimed']);
    expect(ra.remote.get('198.19.2.0/24')?.ipv6Subnet?.toString()).toBe('2001:2:1:1::/64');
    expect([...(await records(store)).keys()].sort()).toEqual(['198.19.1.0-24&2001:2:1:5::-64', '198.19.2.0-24&2001:2:1:1::-64']);
  });

  it('our reservation naming an older key\'s IPv6 subnet is kept as the operator wrote it, with one error naming both keys', async () => {
    const { store, make } = setup();
    const olderKey = '198.19.1.0-24&2001:2:1:5::-64';
    const olderLease = store.grant(3600);
    store.put(olderKey, encodeLeaseAttrs(hostgw(1)), olderLease);
    store.put('198.19.2.0-24&2001:2:1:5::-64', encodeLeaseAttrs(hostgw(2))); // reserved for node 2: no etcd lease
    const cap = capturingLogger();
    const m = make('198.18.0.2', dual(2, { log: cap.log }));
    const lease = await m.start(new Recorder().listener);
    expect(nameOf(lease)).toBe('198.19.2.0-24&2001:2:1:5::-64');
    expect(lease.expiration).toBeNull();
    expect(store.get('198.19.2.0-24&2001:2:1:5::-64')?.leaseId).toBeNull();
    expect(m.stats()['gaveWay']).toBe(0);
    const told = () => errors(cap.lines).filter((l) => /reservation/.test(String(l['msg'])));
    expect(told()).toHaveLength(1);
    expect(told()[0]).toMatchObject({ key: '/coreos.com/network/subnets/198.19.2.0-24&2001:2:1:5::-64', olderKey: `/coreos.com/network/subnets/${olderKey}` });
    // The older key rewritten: still contested, not said again, nothing deleted.
    store.put(olderKey, encodeLeaseAttrs({ ...hostgw(1), publicIPv6: '2001:2::11' }), olderLease);
    await settle();
    expect(told()).toHaveLength(1);
    expect(store.get('198.19.2.0-24&2001:2:1:5::-64')).toBeDefined();
  });

  it('a writer racing every claim with an older key for our IPv6 subnet gets a delete and a claim at most every 30 s, not at etcd speed', async () => {
    const clock = new ManualClock();
    /** Before each key of node 2 is created: an unusable key for the same IPv6 subnet, made usable 10 ms later. */
    class RacingWriter extends MemoryLeaseStore {
      rivals = 0;
      override async createLease(subnet: Ip4Net, attrs: LeaseAttrs, ttlSeconds: number, ipv6Subnet: Ip6Net | null = null): Promise<WrittenLease | null> {
        if (attrs.publicIP === '198.18.0.2' && ipv6Subnet) {
          const name = leaseKeyName(Ip4Net.parse(`198.19.${200 + this.rivals}.0/24`), ipv6Subnet);
          const id = this.grant(3600);
          this.put(name, '{"PublicIP":', id);
          clock.setTimeout(() => this.put(name, encodeLeaseAttrs(hostgw(50 + this.rivals)), id), 10);
          this.rivals++;
        }
        return super.createLease(subnet, attrs, ttlSeconds, ipv6Subnet);
      }
    }
    const store = new RacingWriter(clock);
    const { make } = setup({ clock, store });
    const m = make('198.18.0.2', dual(2, { random: seeded(7) }));
    await clock.until(m.start(new Recorder().listener));
    const at = (ms: number) => clock.advance(ms).then(() => m.stats()['gaveWay']!);
    // At once, then 0.5, 1, 2, 4, 8, 16 s later (±25 %) and every 30 s after that: 7 in the first minute.
    const minute = await at(60_000);
    expect(minute).toBeGreaterThanOrEqual(5);
    expect(minute).toBeLessThanOrEqual(9);
    const fiveMinutes = await at(240_000);
    expect(fiveMinutes - minute).toBeGreaterThanOrEqual(6);
    expect(fiveMinutes - minute).toBeLessThanOrEqual(10);
    expect(m.stats()['claims']).toBe(fiveMinutes + 1);
  });
});
