// Choosing this node's subnet from a listing of every lease: pure, so every rule (reuse, reservations,
// the previous subnet, random choice, a full network) is tested without a store.
import { type NetworkConfig, candidateSubnets } from './config.js';
import { type Ip4Net, formatIp4 } from './ip4.js';
import type { LeaseListing, LeaseRecord } from './lease-store.js';
import { checkLeaseSubnet } from './lease-validation.js';

export class NetworkFullError extends Error {
  constructor(config: NetworkConfig, taken: number) {
    super(
      `no free subnet: all ${taken} /${config.subnetLen} subnets between ${formatIp4(config.subnetMin)} and ` +
        `${formatIp4(config.subnetMax)} in ${config.network} are leased or reserved`,
    );
    this.name = 'NetworkFullError';
  }
}

export interface AllocationRequest {
  network: NetworkConfig;
  /** Ours: a lease already carrying it is ours from before a restart (or a reservation for us). */
  publicIP: string;
  /** Tried before a random subnet when free: the env file's subnet, or the one we just lost. */
  preferred: Ip4Net | null;
  /** Never chosen: the subnet another node took from us. */
  avoid: Ip4Net | null;
  /** A number in [0, 1); Math.random in production, a seeded source in tests. */
  random: () => number;
}

export type Allocation =
  /** Rewrite this existing key (ours, or reserved for us). */
  | { kind: 'take-over'; record: LeaseRecord }
  /** Create the key for this free subnet. */
  | { kind: 'create'; subnet: Ip4Net; preferred: boolean };

/** A subnet we may lease under this config. */
export function isCandidate(subnet: Ip4Net, c: NetworkConfig): boolean {
  return subnet.prefixLen === c.subnetLen && subnet.ip >= c.subnetMin && subnet.ip <= c.subnetMax;
}

/**
 * A lease that already carries our PublicIP, else `preferred` if it is free, else a random free
 * subnet. Throws NetworkFullError when nothing is free.
 */
export function chooseSubnet(listing: LeaseListing, req: AllocationRequest): Allocation {
  const { records, invalid } = listing;
  const avoided = (sn: Ip4Net) => req.avoid !== null && sn.equals(req.avoid);
  const mine = records.find((r) => r.attrs.publicIP === req.publicIP && isCandidate(r.subnet, req.network) && !avoided(r.subnet));
  if (mine) return { kind: 'take-over', record: mine };

  const occupancy = new Occupancy(listing, req.network);
  const isFree = (sn: Ip4Net) => occupancy.isFree(sn) && !avoided(sn);
  const { preferred } = req;
  if (preferred !== null && isCandidate(preferred, req.network) && isFree(preferred)) {
    return { kind: 'create', subnet: preferred, preferred: true };
  }
  const free = [...candidateSubnets(req.network)].filter(isFree);
  if (free.length === 0) throw new NetworkFullError(req.network, records.length + invalid.length);
  return { kind: 'create', subnet: free[Math.floor(req.random() * free.length)]!, preferred: false };
}

/** The subnets already held, for fast "is this one free?" checks while choosing. */
class Occupancy {
  private readonly taken = new Set<string>();

  constructor(listing: LeaseListing, network: NetworkConfig) {
    // A key whose value is unusable still occupies the subnet it names: never claim under someone
    // else's key. A key every node refuses for its size or place (e.g. 198.19.0.0-16, 0.0.0.0-0)
    // occupies nothing, or one junk key would fill the network.
    const nets = [...listing.records.map((r) => r.subnet), ...listing.invalid.flatMap((bad) => (bad.subnet ? [bad.subnet] : []))];
    for (const net of nets) if (checkLeaseSubnet(net, network) === null) this.taken.add(net.toKey());
  }

  /** Candidates all have the network's SubnetLen, so only a key for exactly the same subnet can overlap one. */
  isFree(subnet: Ip4Net): boolean {
    return !this.taken.has(subnet.toKey());
  }
}
