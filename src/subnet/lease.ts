// A subnet lease as stored in etcd, in upstream flannel's JSON so that upstream nodes and ours
// can share one cluster (see docs/compatibility.md).
import { Ip4Net, isIp4 } from './ip4.js';
import { type Ip6Net, isIp6 } from './ip6.js';

export type BackendType = 'udp' | 'vxlan' | 'host-gw';
const BACKEND_TYPES: readonly string[] = ['udp', 'vxlan', 'host-gw'];

/** What a node publishes about itself alongside its subnet. */
export interface LeaseAttrs {
  publicIP: string;
  publicIPv6: string | null;
  backendType: BackendType;
  /** vxlan: { VNI, VtepMAC }; udp: none. Kept as parsed JSON; each backend validates its own. */
  backendData: Record<string, unknown> | null;
  /** Dual-stack vxlan: { VNI, VtepMAC } of the IPv6 device. Absent (not written) otherwise. */
  backendV6Data?: Record<string, unknown> | null;
}

export interface Lease {
  subnet: Ip4Net;
  /** The IPv6 subnet of a dual-stack lease. */
  ipv6Subnet?: Ip6Net | null;
  attrs: LeaseAttrs;
  /** When the etcd lease runs out; null for a reservation (a key with no etcd lease) or when not tracked. */
  expiration: Date | null;
}

export type LeaseEvent = { type: 'added'; lease: Lease } | { type: 'removed'; lease: Lease };

/**
 * Serialises attrs as upstream does: udp leases carry no BackendType/BackendData at all, host-gw ones
 * no BackendData (upstream omits empty data), and only dual-stack vxlan ones BackendV6Data.
 */
export function encodeLeaseAttrs(attrs: LeaseAttrs): string {
  const wire: Record<string, unknown> = { PublicIP: attrs.publicIP, PublicIPv6: attrs.publicIPv6 };
  if (attrs.backendType !== 'udp') {
    wire['BackendType'] = attrs.backendType;
    if (attrs.backendData !== null || attrs.backendType === 'vxlan') wire['BackendData'] = attrs.backendData;
    if (attrs.backendV6Data) wire['BackendV6Data'] = attrs.backendV6Data;
  }
  return JSON.stringify(wire);
}

/**
 * Parses a lease value written by us or by upstream flanneld. Throws with the reason when the value
 * is not a lease we can use; callers skip such keys with a warning rather than failing.
 */
export function decodeLeaseAttrs(value: string): LeaseAttrs {
  let raw: unknown;
  try {
    raw = JSON.parse(value);
  } catch (err) {
    throw new Error(`lease value is not JSON: ${(err as Error).message}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error('lease value is not a JSON object');
  const obj = raw as Record<string, unknown>;
  const publicIP = obj['PublicIP'];
  if (typeof publicIP !== 'string' || !isIp4(publicIP)) throw new Error('lease PublicIP is missing or not an IPv4 address');
  const v6 = obj['PublicIPv6'];
  if (v6 !== undefined && v6 !== null && typeof v6 !== 'string') throw new Error('lease PublicIPv6 is not a string');
  if (typeof v6 === 'string' && !isIp6(v6)) throw new Error('lease PublicIPv6 is not an IPv6 address');
  const type = obj['BackendType'] ?? 'udp'; // upstream's udp backend writes no BackendType
  if (typeof type !== 'string' || !BACKEND_TYPES.includes(type)) throw new Error(`lease BackendType "${String(type)}" is not supported`);
  const data = obj['BackendData'];
  if (data !== undefined && data !== null && (typeof data !== 'object' || Array.isArray(data))) {
    throw new Error('lease BackendData is not a JSON object');
  }
  const v6Data = obj['BackendV6Data'];
  if (v6Data !== undefined && v6Data !== null && (typeof v6Data !== 'object' || Array.isArray(v6Data))) {
    throw new Error('lease BackendV6Data is not a JSON object');
  }
  return {
    publicIP,
    publicIPv6: typeof v6 === 'string' ? v6 : null,
    backendType: type as BackendType,
    backendData: (data as Record<string, unknown> | undefined) ?? null,
    ...(v6Data ? { backendV6Data: v6Data as Record<string, unknown> } : {}),
  };
}

export function sameAttrs(a: LeaseAttrs, b: LeaseAttrs): boolean {
  return encodeLeaseAttrs(a) === encodeLeaseAttrs(b);
}
