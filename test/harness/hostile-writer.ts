// Writes malformed and hostile leases into a cluster's etcd, as someone with write access
// to the prefix could. Run inside the hub namespace (where etcd listens):
//   tsx test/harness/hostile-writer.ts <endpoint> seed            (the standing set, before daemons start)
//   tsx test/harness/hostile-writer.ts <endpoint> stream <ms> <seed>   (a stream of changes for <ms>)
// Prints one JSON line: how many writes and deletes of each kind it made.
//
// Every lease written here is invalid: none may reach a kernel. Keys with a valid /24 name live only
// in a pool seeded before the daemons start (198.19.100-149.0/24), so a node joining later never
// picks one of them and the stream never overwrites a real node's key. The keys that overlap live
// leases are computed from the live leases themselves, re-read every second.
import { pathToFileURL } from 'node:url';
import { Etcd3 } from 'etcd3';

const PREFIX = '/coreos.com/network/subnets/';
export const POOL_FIRST = 100;
export const POOL_SIZE = 50;
export const JUNK_KEYS = 1500;
/** A good reservation for a node that does not exist: every node must program it exactly. */
export const GOOD_RESERVATION = { key: '198.19.250.0-24', publicIP: '198.18.0.99', vtepMac: '0e:00:00:00:00:99' };
/** Node addresses of the cluster (198.18.0.1-4): their leases are the live ones. */
const NODE_IPS = new Set(['198.18.0.1', '198.18.0.2', '198.18.0.3', '198.18.0.4']);

/** xorshift32: the same seed gives the same stream. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x1_0000_0000;
  };
}

const vxlan = (publicIP: string, mac: string, extra: Record<string, unknown> = {}): string =>
  JSON.stringify({ PublicIP: publicIP, PublicIPv6: null, BackendType: 'vxlan', BackendData: { VNI: 1, VtepMAC: mac }, ...extra });

type Pick = <T>(xs: readonly T[]) => T;

/** Invalid values for a key whose name is a fine /24: each kind is one way a value can be bad. */
function badValues(pick: Pick, n: number): Record<string, () => string> {
  const ip = `198.18.0.${100 + (n % 100)}`;
  const mac = `0e:00:00:00:01:${(n % 256).toString(16).padStart(2, '0')}`;
  return {
    padded_ip: () => vxlan(pick([`${ip} `, ` ${ip}`, `${ip}\t`, `${ip}\n`]), mac),
    unicode_space_ip: () => vxlan(pick([`${ip}\u00a0`, `\u3000${ip}`, `${ip}\u2003`, `198.18.0.7\u200b7`]), mac),
    leading_zero_ip: () => vxlan(`198.18.0.0${n % 10}`, mac),
    multicast_ip: () => vxlan(pick(['224.0.0.1', '239.1.2.3', '255.255.255.255', '0.0.0.0', '127.0.0.1']), mac),
    multicast_mac: () => vxlan(ip, pick(['01:00:5e:00:00:01', '33:33:00:00:00:01', 'ff:ff:ff:ff:ff:ff', '03:00:00:00:00:01'])),
    zero_mac: () => vxlan(ip, '00:00:00:00:00:00'),
    malformed_mac: () => vxlan(ip, pick(['0e:00:00:00:01', 'zz:00:00:00:00:01', '0e:00:00:00:00:01 dev lo', '0e:00:00:00:00:01#x', '"0e:00:00:00:00:01"', '0e:00:00:00:00:01 ', ''])),
    control_chars_mac: () => vxlan(ip, pick(['\u001b[2J\u001b[H0e:00:00:00:00:01', '0e:00:00:00:00:01\r', '0e:00\u202e:00:00:00:01'])),
    control_chars_field: () => vxlan(ip, mac, { Note: pick(['\u001b]0;pwned\u0007', 'a\u009b2Jb', 'x\u2028y']) }),
    unknown_backend: () => JSON.stringify({ PublicIP: ip, BackendType: pick(['Host-GW', 'VXLAN', 'wireguard', 'vxlan ']), BackendData: { VNI: 1, VtepMAC: mac } }),
    missing_backend_data: () => JSON.stringify({ PublicIP: ip, BackendType: 'vxlan' }),
    bad_vni: () => vxlan(ip, mac).replace('"VNI":1', pick(['"VNI":16777216', '"VNI":-1', '"VNI":"1"', '"VNI":1.5'])),
    bad_ipv6: () => vxlan(ip, mac, { PublicIPv6: pick(['2001:2::1 ', 'ff02::1', 'fe80::1%eth0', '::', 'nope']) }),
    bad_json: () => pick(['{', '[]', 'null', '"198.18.0.5"', `{"PublicIP":"${ip}",}`, '']),
    duplicate_case_keys: () => `{"PublicIP":"${ip}","publicip":"198.18.0.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"${mac}"}}`,
    huge_value: () => vxlan(ip, mac, { Pad: 'x'.repeat(pick([5_000, 100_000, 1_000_000])) }),
  };
}

interface Live {
  /** Third octets of the live nodes' /24 subnets. */
  thirds: number[];
}

/** Keys that are not a usable subnet name, or a subnet the network config refuses; values are valid. */
function badKeys(pick: Pick, live: Live, n: number): Record<string, () => [string, string]> {
  const value = vxlan(`198.18.0.${150 + (n % 50)}`, `0e:00:00:00:02:${(n % 256).toString(16).padStart(2, '0')}`);
  const third = live.thirds.length > 0 ? pick(live.thirds) : 7;
  return {
    // Overlaps with live leases: the /25 at a node's base is the example.
    overlap_live_25: () => [`198.19.${third}.${pick([0, 128])}-25`, value],
    overlap_live_23: () => [`198.19.${third & ~1}.0-23`, value],
    overlap_live_26: () => [`198.19.${third}.${pick([0, 64, 128, 192])}-26`, value],
    overlap_network: () => [pick(['198.19.0.0-16', '198.19.0.0-17', '198.16.0.0-14', '0.0.0.0-0', `198.19.${third}.1-32`]), value],
    outside_network: () => [pick(['198.18.0.0-24', '198.20.5.0-24', '198.20.0.0-16']), value],
    not_a_subnet: () => [pick(['junk', '198.19.5.0/24', '198.19.5.0', '198.19.005.0-24', '198.19.5.0-024', '198.19.5.0-24 ', ' 198.19.5.0-24', '198.19.5.1-24', '198.19.5.0-24&2001:2:1:1E::-64', '..', 'a/b/c']), value],
    control_chars_key: () => [pick(['198.19.5.0-24\u001b[2J', '\u001b[1;1H\u001b[2Kjunk', 'ok\rEVIL', '\u202e42-0.5.91.891', 'a\u0000b', 'x\u009b2J']), value],
    huge_key: () => [`${'k'.repeat(pick([1_000, 10_000]))}-${n}`, value],
  };
}

async function readLive(client: Etcd3): Promise<Live> {
  const all = await client.getAll().prefix(PREFIX).strings();
  const thirds: number[] = [];
  for (const [key, value] of Object.entries(all)) {
    const m = /^198\.19\.(\d+)\.0-24$/.exec(key.slice(PREFIX.length));
    if (!m) continue;
    try {
      const v = JSON.parse(value) as { PublicIP?: unknown };
      if (typeof v.PublicIP === 'string' && NODE_IPS.has(v.PublicIP)) thirds.push(Number(m[1]));
    } catch {
      /* not a live node's lease */
    }
  }
  return { thirds };
}

async function seed(client: Etcd3, random: () => number): Promise<Record<string, number>> {
  const pick: Pick = (xs) => xs[Math.floor(random() * xs.length)]!;
  const counts: Record<string, number> = {};
  const puts: [string, string][] = [];
  for (let i = 0; i < POOL_SIZE; i++) {
    const kinds = badValues(pick, i);
    const kind = Object.keys(kinds)[i % Object.keys(kinds).length]!;
    counts[kind] = (counts[kind] ?? 0) + 1;
    puts.push([`198.19.${POOL_FIRST + i}.0-24`, kinds[kind]!()]);
  }
  for (let i = 0; i < JUNK_KEYS; i++) puts.push([`junk-${i}`, `{"PublicIP":"198.18.0.${i % 200 + 1}"}`]);
  counts['junk'] = JUNK_KEYS;
  // 100 puts in flight at a time: a burst, as a careless script would write it.
  for (let i = 0; i < puts.length; i += 100) await Promise.all(puts.slice(i, i + 100).map(([k, v]) => client.put(PREFIX + k).value(v)));
  const r = GOOD_RESERVATION;
  await client.put(PREFIX + r.key).value(vxlan(r.publicIP, r.vtepMac));
  return counts;
}

async function stream(client: Etcd3, random: () => number, ms: number): Promise<{ writes: number; deletes: number; byKind: Record<string, number> }> {
  const pick: Pick = (xs) => xs[Math.floor(random() * xs.length)]!;
  const byKind: Record<string, number> = {};
  const written = new Set<string>(); // keys outside the pool, which may be deleted again
  let writes = 0;
  let deletes = 0;
  let live = await readLive(client);
  let liveAt = Date.now();
  const end = Date.now() + ms;
  for (let n = 0; Date.now() < end; n++) {
    if (Date.now() - liveAt > 1000) [live, liveAt] = [await readLive(client), Date.now()];
    const roll = random();
    if (roll < 0.1 && written.size > 0) {
      const key = pick([...written]);
      written.delete(key);
      await client.delete().key(PREFIX + key);
      deletes++;
    } else if (roll < 0.55) {
      const kinds = badValues(pick, n);
      const kind = pick(Object.keys(kinds));
      await client.put(`${PREFIX}198.19.${POOL_FIRST + Math.floor(random() * POOL_SIZE)}.0-24`).value(kinds[kind]!());
      byKind[kind] = (byKind[kind] ?? 0) + 1;
      writes++;
    } else {
      const kinds = badKeys(pick, live, n);
      const kind = pick(Object.keys(kinds));
      const [key, value] = kinds[kind]!();
      await client.put(PREFIX + key).value(value);
      written.add(key);
      byKind[kind] = (byKind[kind] ?? 0) + 1;
      writes++;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return { writes, deletes, byKind };
}

async function main(): Promise<void> {
  const [endpoint, mode, ...rest] = process.argv.slice(2);
  const client = new Etcd3({ hosts: endpoint! });
  try {
    if (mode === 'seed') {
      console.log(JSON.stringify(await seed(client, rng(Number(rest[0] ?? 1)))));
    } else if (mode === 'stream') {
      console.log(JSON.stringify(await stream(client, rng(Number(rest[1] ?? 1)), Number(rest[0]))));
    } else {
      throw new Error(`usage: hostile-writer.ts <endpoint> seed [seed] | stream <ms> [seed]`);
    }
  } finally {
    client.close();
  }
}

// Run as a script (the test imports only the constants above).
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
