// Whether our own lease key is the newer claimant of one of its subnets. A claim is a create-if-absent
// on the whole key, so it protects the pair a key names, not each subnet: two nodes claiming at the
// same moment can both create keys that share an IPv6 subnet (`a-24&x-64` and `b-24&x-64`), or one
// IPv4 subnet under two key forms (`a-24` and `a-24&x-64`). Every node then applies the older-key
// rule (known-leases.ts) and refuses the newer key; the node holding it must give way, since it
// would otherwise keep addressing pods from a subnet that every other node routes elsewhere.
import type { NetworkConfig } from './config.js';
import { olderFirst } from './known-leases.js';
import type { LeaseRecord, LeaseSubnets } from './lease-store.js';
import { checkLeaseSubnet } from './lease-validation.js';

/** Our key as the older-key rule sees it. */
export interface OwnKey extends LeaseSubnets {
  /** The whole key, as listed. */
  key: string;
  createRevision: string;
}

/** An older key that takes subnets of ours, and which (as text, for logs). */
export interface Contest {
  older: LeaseRecord;
  subnets: string[];
}

/**
 * The keys that take one of our subnets under the older-key rule, oldest first: well-formed keys other
 * than ours that name our IPv4 subnet (in either key form) or, in dual stack, our IPv6 subnet, whose
 * other subnet every node accepts too, and that are older than ours. This errs on the side of giving
 * way: an older key that itself lost a subnet or a VTEP MAC to a third, still older key claims nothing
 * on the other nodes, yet counts here — giving way when it was not needed costs a move, keeping a key
 * every other node refuses costs the pods their traffic.
 */
export function olderClaimants(own: OwnKey, records: Iterable<LeaseRecord>, network: NetworkConfig): Contest[] {
  const ipv6 = network.ipv6 ?? null;
  const out: Contest[] = [];
  for (const r of records) {
    if (r.key === own.key || olderFirst(r, own) >= 0) continue;
    const v6 = ipv6 ? (r.ipv6Subnet ?? null) : null;
    const subnets: string[] = [];
    // Our subnets are candidates of the network, so a key naming one passes that family's checks; the
    // key's other subnet must pass its own, or every node refuses the key as a whole.
    const v6Usable = v6 === null || (ipv6!.network.covers(v6) && v6.prefixLen === ipv6!.subnetLen);
    if (r.subnet.equals(own.subnet) && v6Usable) subnets.push(own.subnet.toString());
    if (v6 !== null && own.ipv6Subnet && v6.equals(own.ipv6Subnet) && checkLeaseSubnet(r.subnet, network) === null) subnets.push(own.ipv6Subnet.toString());
    if (subnets.length > 0) out.push({ older: r, subnets });
  }
  return out.sort((a, b) => olderFirst(a.older, b.older));
}
