// A subnet lease as stored in etcd, in upstream flannel's JSON so that upstream nodes and ours
// can share one cluster (see docs/compatibility.md).
import { Ip4Net, isIp4 } from './ip4.js';

export type BackendType = 'udp' | 'vxlan';

/** What a node publishes about itself alongside its subnet. */
export interface LeaseAttrs {
  publicIP: string;
  publicIPv6: string | null;
  backendType: BackendType;
  /** vxlan: { VNI, VtepMAC }; udp: none. Kept as parsed JSON; each backend validates its own. */
  backendData: Record<string, unknown> | null;
}

export interface Lease {
  subnet: Ip4Net;
  attrs: LeaseAttrs;
  /** When the etcd lease runs out; null for a reservation (a key with no etcd lease) or when not tracked. */
  expiration: Date | null;
}

export type LeaseEvent = { type: 'added'; lease: Lease } | { type: 'removed'; lease: Lease };

/** Serialises attrs as upstream does: udp leases carry no BackendType/BackendData at all. */
export function encodeLeaseAttrs(attrs: LeaseAttrs): string {
  const wire: Record<string, unknown> = { PublicIP: attrs.publicIP, PublicIPv6: attrs.publicIPv6 };
  if (attrs.backendType !== 'udp') {
    wire['BackendType'] = attrs.backendType;
    wire['BackendData'] = attrs.backendData;
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
  const type = obj['BackendType'] ?? 'udp'; // upstream's udp backend writes no BackendType
  if (type !== 'udp' && type !== 'vxlan') throw new Error(`lease BackendType "${String(type)}" is not supported`);
  const data = obj['BackendData'];
  if (data !== undefined && data !== null && (typeof data !== 'object' || Array.isArray(data))) {
    throw new Error('lease BackendData is not a JSON object');
  }
  return {
    publicIP,
    publicIPv6: typeof v6 === 'string' ? v6 : null,
    backendType: type,
    backendData: (data as Record<string, unknown> | undefined) ?? null,
  };
}

export function sameAttrs(a: LeaseAttrs, b: LeaseAttrs): boolean {
  return encodeLeaseAttrs(a) === encodeLeaseAttrs(b);
}
