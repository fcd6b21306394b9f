// flannelctl lease reserve | release | delete: what operators otherwise do with etcdctl, checked
// against the network config and written with transactions, so a node's write in between is never
// overwritten. A reservation is upstream's: a lease key with no etcd lease (no TTL), which never
// expires and which only the node with that PublicIP takes (see docs/compatibility.md).
import { Ip4Net, isIp4 } from '../common/ip4.js';
import type { EtcdRegistry, LeaseRecord } from '../etcd/registry.js';
import { printable } from '../common/printable.js';
import { parseNetworkConfig } from '../subnet/config.js';
import type { LeaseAttrs } from '../subnet/lease.js';
import { checkLeaseSubnet } from '../subnet/lease-validation.js';
import { CtlError } from './session.js';

/** The default TTL a released reservation gets: upstream's fixed 24 h lease. */
export const RELEASE_TTL_SECONDS = 24 * 3600;

/** A subnet as given on the command line: "198.19.5.0/24" or the key form "198.19.5.0-24". */
export function parseSubnetArg(text: string): Ip4Net {
  try {
    return Ip4Net.parse(text.replace(/^(\d+\.\d+\.\d+\.\d+)-(\d+)$/, '$1/$2'));
  } catch (err) {
    throw new CtlError(`"${text}" is not a subnet such as 198.19.5.0/24: ${(err as Error).message}`);
  }
}

async function find(registry: EtcdRegistry, subnet: Ip4Net): Promise<{ record: LeaseRecord | null; invalid: boolean }> {
  const { records, invalid } = await registry.listLeases();
  const record = records.find((r) => r.subnet.equals(subnet)) ?? null;
  return { record, invalid: invalid.some((i) => i.subnet?.equals(subnet)) };
}

/** Checks that `subnet` is one this network hands out (inside Network, of SubnetLen): what every node accepts. */
async function checkAgainstConfig(registry: EtcdRegistry, subnet: Ip4Net): Promise<void> {
  const text = await registry.getConfig();
  if (text === null) throw new CtlError('no network config in etcd: set one first (flannelctl config set)');
  const config = parseNetworkConfig(text);
  const problem = checkLeaseSubnet(subnet, config);
  if (problem?.reason === 'outside_network') throw new CtlError(`${subnet} is not inside the network ${config.network}`);
  if (problem) throw new CtlError(`${subnet} is not a /${config.subnetLen} subnet, the network's SubnetLen`);
}

export type ReserveOutcome = 'created' | 'converted' | 'already reserved';

/**
 * Reserves `subnet` for the node whose public IP is `publicIP`: a new key with no TTL, or, when that
 * node already holds the subnet, its lease made permanent (its value kept, so its VTEP stays valid).
 */
export async function reserveLease(registry: EtcdRegistry, subnet: Ip4Net, publicIP: string): Promise<ReserveOutcome> {
  if (!isIp4(publicIP)) throw new CtlError(`"${publicIP}" is not an IPv4 address`);
  await checkAgainstConfig(registry, subnet);
  const { record, invalid } = await find(registry, subnet);
  if (invalid) throw new CtlError(`${subnet} holds a value that is not a lease: delete it first (flannelctl lease delete ${subnet})`);
  if (record === null) {
    const attrs: LeaseAttrs = { publicIP, publicIPv6: null, backend: { type: 'udp' } };
    if (!(await registry.putLeaseIf(subnet, attrs, null, null))) throw new CtlError(`${subnet} was taken meanwhile; try again`);
    return 'created';
  }
  if (record.attrs.publicIP !== publicIP) {
    throw new CtlError(`${subnet} is held by ${record.attrs.publicIP}, not ${publicIP}: delete that lease first if it is stale`);
  }
  if (record.leaseId === null) return 'already reserved';
  if (!(await registry.putLeaseIf(subnet, record.attrs, null, record.modRevision))) throw new CtlError(`${subnet} changed meanwhile; try again`);
  return 'converted';
}

/** Turns a reservation back into an ordinary lease that expires after `ttlSeconds` unless renewed. */
export async function releaseLease(registry: EtcdRegistry, subnet: Ip4Net, ttlSeconds = RELEASE_TTL_SECONDS): Promise<LeaseRecord> {
  const { record } = await find(registry, subnet);
  if (record === null) throw new CtlError(`no lease for ${subnet}`);
  if (record.leaseId !== null) throw new CtlError(`${subnet} is not reserved (it already expires unless renewed)`);
  if (!(await registry.putLeaseIf(subnet, record.attrs, ttlSeconds, record.modRevision))) throw new CtlError(`${subnet} changed meanwhile; try again`);
  return record;
}

/** What `lease delete` would remove: a lease, or a key under subnets/ whose value is not one. */
export interface KeyToDelete {
  key: string;
  modRevision: string;
  /** How to name it in the prompt. */
  description: string;
}

/** The key to delete, for the confirmation prompt; deleteLease() then removes exactly that version. */
export async function leaseToDelete(registry: EtcdRegistry, subnet: Ip4Net): Promise<KeyToDelete> {
  const { records, invalid } = await registry.listLeases();
  const record = records.find((r) => r.subnet.equals(subnet));
  if (record) {
    return { key: record.key, modRevision: record.modRevision, description: `${subnet} (public IP ${record.attrs.publicIP}, ${record.leaseId === null ? 'reserved' : 'leased'})` };
  }
  const bad = invalid.find((i) => i.subnet?.equals(subnet));
  if (bad) return { key: bad.key, modRevision: bad.modRevision, description: `${subnet} (not a valid lease: ${printable(bad.reason, 120)})` };
  throw new CtlError(`no lease for ${subnet}`);
}

export async function deleteLease(registry: EtcdRegistry, target: KeyToDelete): Promise<void> {
  if (!(await registry.deleteLeaseIf(target.key, target.modRevision))) {
    throw new CtlError(`${target.description} changed since it was shown; nothing deleted (run the command again)`);
  }
}

/**
 * Deletes the leases (and reservations) of the node cleaning itself up: every lease whose public IP is
 * one of `ownAddresses` — a node is its public IP to flannel, and a node that ran with several network
 * configs may hold more than one key. `subnet`, from the node's env file, must be among them when its
 * lease exists: a lease there under another public IP is not ours to delete (a stale env file, or a node
 * behind NAT with --public-ip), and is reported.
 */
export async function deleteOwnLeases(registry: EtcdRegistry, subnet: Ip4Net | null, ownAddresses: ReadonlySet<string>): Promise<string[]> {
  const { records } = await registry.listLeases();
  const deleted: string[] = [];
  for (const record of records.filter((r) => ownAddresses.has(r.attrs.publicIP))) {
    if (!(await registry.deleteLeaseIf(record.key, record.modRevision))) throw new CtlError(`the lease of ${record.subnet} changed meanwhile; run the command again`);
    deleted.push(`lease ${record.subnet} (public IP ${record.attrs.publicIP}${record.leaseId === null ? ', reserved' : ''}) deleted from etcd`);
  }
  const named = subnet ? records.find((r) => r.subnet.equals(subnet) && !ownAddresses.has(r.attrs.publicIP)) : undefined;
  if (named) {
    throw new CtlError(`the lease of ${named.subnet} belongs to ${named.attrs.publicIP}, not to an address of this node: left in place (flannelctl lease delete removes it)`);
  }
  return deleted;
}
