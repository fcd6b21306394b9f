// Choosing this node's subnet from a listing of every lease: pure, so every rule (reuse, reservations,
// the previous subnet, random choice, a full network) is tested without a store.
import { type NetworkConfig, candidateSubnets } from './config.js';
import { type Ip6NetworkConfig, candidateIpv6Subnets, isIpv6Candidate } from './config-ipv6.js';
import { type Ip4Net, formatIp4 } from '../common/ip4.js';
import { Ip6Net, formatIp6 } from '../common/ip6.js';
import type { LeaseListing, LeaseRecord } from './lease-store.js';
import { checkLeaseSubnet } from './lease-validation.js';

/** How many free IPv6 subnets, from the lowest, the random choice is made among (upstream's bound too). */
export const IPV6_CHOICES = 100;

export class NetworkFullError extends Error {
  constructor(config: NetworkConfig, taken: number) {
    super(
      `no free subnet: all ${taken} /${config.subnetLen} subnets between ${formatIp4(config.subnetMin)} and ` +
        `${formatIp4(config.subnetMax)} in ${config.network} are leased or reserved`,
    );
    this.name = 'NetworkFullError';
  }
}

export class Ipv6NetworkFullError extends NetworkFullError {
  constructor(config: NetworkConfig, ipv6: Ip6NetworkConfig, taken: number) {
    super(config, taken);
    this.message =
      `no free IPv6 subnet: all ${taken} /${ipv6.subnetLen} subnets between ${formatIp6(ipv6.subnetMin)} and ` +
      `${formatIp6(ipv6.subnetMax)} in ${ipv6.network} are leased or reserved`;
  }
}

/**
 * Another node holds a lease with our PublicIP (two nodes given one --public-ip, a copied config): we
 * take no lease while it lives, rather than take its subnet or share it.
 */
export class PublicIpInUseError extends Error {
  constructor(
    readonly publicIP: string,
    readonly holder: LeaseRecord,
    nodeIdentity: string,
  ) {
    const theirs = holder.attrs.nodeIdentity ?? 'none (upstream flanneld or an older version)';
    super(
      `public IP ${publicIP} is in use by another node: it holds ${holder.subnet} (key ${holder.key}, node identity ${theirs}; ` +
        `ours is ${nodeIdentity}). This node takes no lease while that one lives: give it its own --public-ip, ` +
        `or, if that node is gone, delete its lease (flannelctl lease delete ${holder.subnet})`,
    );
    this.name = 'PublicIpInUseError';
  }
}

export interface AllocationRequest {
  network: NetworkConfig;
  /** Ours: a lease already carrying it is ours from before a restart (or a reservation for us). */
  publicIP: string;
  /**
   * Ours too: of the leases carrying our PublicIP, only one with this identity is ours. Without it
   * (tests of the choice alone), any lease carrying our PublicIP is.
   */
  nodeIdentity?: string | null;
  /**
   * Whether a lease with our PublicIP and no identity (written by upstream flanneld, an older version,
   * or an operator's reservation) is ours: at start, yes — a node swapped in place keeps its subnet;
   * after our lease was taken while we ran, no — whoever wrote it is another node.
   */
  unmarkedIsOurs?: boolean;
  /** Tried before a random subnet when free: the env file's subnet, or the one we just lost. */
  preferred: Ip4Net | null;
  /** The same for the IPv6 subnet (dual stack). */
  preferredIpv6?: Ip6Net | null;
  /** Never chosen: the subnet another node took from us. */
  avoid: Ip4Net | null;
  /** A number in [0, 1); Math.random in production, a seeded source in tests. */
  random: () => number;
}

export type Allocation =
  /** Rewrite this existing key (ours, or reserved for us). */
  | { kind: 'take-over'; record: LeaseRecord }
  /** Create the key for this free subnet (and free IPv6 subnet, in dual stack). */
  | { kind: 'create'; subnet: Ip4Net; ipv6Subnet: Ip6Net | null; preferred: boolean };

/** A subnet we may lease under this config. */
export function isCandidate(subnet: Ip4Net, c: NetworkConfig): boolean {
  return subnet.prefixLen === c.subnetLen && subnet.ip >= c.subnetMin && subnet.ip <= c.subnetMax;
}

/**
 * A lease that already carries our PublicIP (and, when we have one, our identity or none), else
 * `preferred` if it is free, else a random free subnet. Throws PublicIpInUseError when another node's
 * lease carries our PublicIP, NetworkFullError when nothing is free.
 */
export function chooseSubnet(listing: LeaseListing, req: AllocationRequest): Allocation {
  const { records, invalid } = listing;
  const avoided = (sn: Ip4Net) => req.avoid !== null && sn.equals(req.avoid);
  const ipv6 = req.network.ipv6 ?? null;
  // In dual stack only a key with both subnets is ours to reuse; in IPv4 only, only a key without one.
  const familiesFit = (r: LeaseRecord) => (ipv6 ? !!r.ipv6Subnet && isIpv6Candidate(r.ipv6Subnet, ipv6) : !r.ipv6Subnet);
  const identity = req.nodeIdentity ?? null;
  const ours = (r: LeaseRecord): boolean => {
    if (r.attrs.publicIP !== req.publicIP) return false;
    if (identity === null || r.attrs.nodeIdentity === identity) return true;
    return !r.attrs.nodeIdentity && (req.unmarkedIsOurs ?? true);
  };
  const mine = records.find((r) => ours(r) && isCandidate(r.subnet, req.network) && familiesFit(r) && !avoided(r.subnet));
  if (mine) return { kind: 'take-over', record: mine };
  const other = records.find((r) => r.attrs.publicIP === req.publicIP && !ours(r));
  if (other) throw new PublicIpInUseError(req.publicIP, other, identity ?? '');

  const occupancy = new Occupancy(listing, req.network);
  const isFree = (sn: Ip4Net) => occupancy.isFree(sn) && !avoided(sn);
  const { preferred } = req;
  const ipv6Subnet = ipv6 ? chooseIpv6Subnet(listing, req, ipv6) : null;
  if (preferred !== null && isCandidate(preferred, req.network) && isFree(preferred)) {
    return { kind: 'create', subnet: preferred, ipv6Subnet, preferred: true };
  }
  const free = [...candidateSubnets(req.network)].filter(isFree);
  if (free.length === 0) throw new NetworkFullError(req.network, records.length + invalid.length);
  return { kind: 'create', subnet: free[Math.floor(req.random() * free.length)]!, ipv6Subnet, preferred: false };
}

/**
 * The IPv6 half of a new key: the preferred subnet when free, else one at random among the lowest
 * IPV6_CHOICES free ones (an IPv6 network may hold billions of subnets: the scan stops there).
 */
function chooseIpv6Subnet(listing: LeaseListing, req: AllocationRequest, ipv6: Ip6NetworkConfig): Ip6Net {
  const taken: Ip6Net[] = [
    ...listing.records.flatMap((r) => (r.ipv6Subnet ? [r.ipv6Subnet] : [])),
    ...listing.invalid.flatMap((bad) => (bad.ipv6Subnet ? [bad.ipv6Subnet] : [])),
  ];
  const sameLength = new Set(taken.filter((n) => n.prefixLen === ipv6.subnetLen).map((n) => n.toKey()));
  const others = taken.filter((n) => n.prefixLen !== ipv6.subnetLen);
  const isFree = (n: Ip6Net) => !sameLength.has(n.toKey()) && !others.some((o) => o.overlaps(n));
  const preferred = req.preferredIpv6 ?? null;
  if (preferred !== null && isIpv6Candidate(preferred, ipv6) && isFree(preferred)) return preferred;
  const free: Ip6Net[] = [];
  let sn: Ip6Net | null = candidateIpv6Subnets(ipv6).next().value ?? null;
  while (sn !== null && sn.ip <= ipv6.subnetMax && free.length < IPV6_CHOICES) {
    // A shorter key (say a /56 among /64s) blocks a whole run of candidates: step past it at once,
    // so the scan is bounded by the number of keys plus IPV6_CHOICES.
    const blocker = others.find((o) => o.overlaps(sn!));
    if (blocker && blocker.prefixLen < sn.prefixLen) {
      sn = blocker.last + 1n > ipv6.subnetMax ? null : new Ip6Net(blocker.last + 1n, sn.prefixLen);
      continue;
    }
    if (!blocker && !sameLength.has(sn.toKey())) free.push(sn);
    sn = sn.next();
  }
  if (free.length === 0) throw new Ipv6NetworkFullError(req.network, ipv6, taken.length);
  return free[Math.floor(req.random() * free.length)]!;
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
