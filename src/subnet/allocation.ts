// Choosing this node's subnet from a listing of every lease: pure, so every rule (reuse, reservations,
// the previous subnet, random choice, a full network) is tested without a store.
import { type NetworkConfig, candidateSubnets } from './config.js';
import { type Ip4Net, formatIp4 } from './ip4.js';
import type { LeaseListing, LeaseRecord } from './lease-store.js';

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
  /**
   * Re-claiming the subnet we just held: only its own key can stand in the way. Keys of another length
   * that overlap it were refused while we held it, and do not win it by our loss.
   */
  reclaiming: boolean;
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

  const occupancy = new Occupancy(listing, req.network.subnetLen);
  const isFree = (sn: Ip4Net) => occupancy.isFree(sn) && !avoided(sn);
  const { preferred } = req;
  if (preferred !== null && isCandidate(preferred, req.network) && (req.reclaiming ? !occupancy.hasKey(preferred) : isFree(preferred))) {
    return { kind: 'create', subnet: preferred, preferred: true };
  }
  const free = [...candidateSubnets(req.network)].filter(isFree);
  if (free.length === 0) throw new NetworkFullError(req.network, records.length + invalid.length);
  return { kind: 'create', subnet: free[Math.floor(req.random() * free.length)]!, preferred: false };
}

/** The subnets already held, for fast "is this one free?" checks while choosing. */
class Occupancy {
  private readonly sameLength = new Set<string>();
  /** Keys whose prefix length differs from the config's: checked for overlap one by one. */
  private readonly others: Ip4Net[] = [];

  constructor(listing: LeaseListing, subnetLen: number) {
    // Unusable keys still occupy the subnet they name: never claim under someone else's key.
    const nets = [...listing.records.map((r) => r.subnet), ...listing.invalid.flatMap((bad) => (bad.subnet ? [bad.subnet] : []))];
    for (const net of nets) {
      if (net.prefixLen === subnetLen) this.sameLength.add(net.toKey());
      else this.others.push(net);
    }
  }

  /** A key for exactly this subnet exists (valid or not). */
  hasKey(subnet: Ip4Net): boolean {
    return this.sameLength.has(subnet.toKey());
  }

  isFree(subnet: Ip4Net): boolean {
    return !this.sameLength.has(subnet.toKey()) && !this.others.some((o) => o.overlaps(subnet));
  }
}
