// A subnet lease as stored in etcd, in upstream flannel's JSON so that upstream nodes and ours
// can share one cluster (see docs/compatibility.md).
import { printable, quoted } from '../common/printable.js';
import type { Ip4Net } from '../common/ip4.js';
import { parseUnicastIp4 } from '../common/ip4.js';
import type { Ip6Net } from '../common/ip6.js';
import { LeaseRejected, hasControlChars } from './lease-reject.js';
import { MAX_LEASE_VALUE_BYTES, goJsonFields, parseUnicastIp6, parseVtepMac } from './lease-validation.js';

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

const TOP_FIELDS = ['PublicIP', 'PublicIPv6', 'BackendType', 'BackendData', 'BackendV6Data'] as const;
const VXLAN_FIELDS = ['VNI', 'VtepMAC'] as const;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Refuses a control character in any key or string anywhere in a decoded JSON value. */
function refuseControlChars(v: unknown, path: string): void {
  if (typeof v === 'string') {
    if (hasControlChars(v)) throw new LeaseRejected('control_chars', `lease value: ${path} holds control characters: ${quoted(v)}`);
  } else if (Array.isArray(v)) {
    v.forEach((x, i) => refuseControlChars(x, `${path}[${i}]`));
  } else if (isObject(v)) {
    for (const [k, x] of Object.entries(v)) {
      if (hasControlChars(k)) throw new LeaseRejected('control_chars', `lease value: a key in ${path} holds control characters: ${quoted(k)}`);
      refuseControlChars(x, `${path}.${printable(k, 32)}`);
    }
  }
}

/** vxlan's BackendData, normalised: canonical key names, VNI when given, VtepMAC in lower case. */
function decodeVxlanData(data: unknown, field = 'BackendData'): Record<string, unknown> {
  if (!isObject(data)) throw new LeaseRejected('bad_backend_data', `vxlan lease: ${field} is missing or not a JSON object`);
  const f = goJsonFields(data, VXLAN_FIELDS, field);
  const out: Record<string, unknown> = {};
  if (f.VNI !== undefined && f.VNI !== null) {
    if (typeof f.VNI !== 'number' || !Number.isInteger(f.VNI) || f.VNI < 0 || f.VNI > 0xffffff) {
      throw new LeaseRejected('bad_backend_data', `vxlan lease: ${field}.VNI ${printable(JSON.stringify(f.VNI), 32)} is not a VNI (0-16777215)`);
    }
    out['VNI'] = f.VNI;
  }
  out['VtepMAC'] = parseVtepMac(f.VtepMAC);
  return out;
}

/**
 * Parses a lease value written by us or by upstream flanneld, strictly (see lease-validation.ts):
 * keys match case-insensitively as with Go's encoding/json; addresses must be canonical and
 * unicast, and are stored canonical; vxlan's VtepMAC must be a unicast MAC and is stored in lower
 * case. Throws LeaseRejected with the reason; callers skip such keys rather than failing.
 */
export function decodeLeaseAttrs(value: string): LeaseAttrs {
  // Cheap bound first: a string never has more UTF-8 bytes than 3 per UTF-16 unit.
  if (value.length > MAX_LEASE_VALUE_BYTES || Buffer.byteLength(value, 'utf8') > MAX_LEASE_VALUE_BYTES) {
    throw new LeaseRejected('too_large', `lease value is ${Buffer.byteLength(value, 'utf8')} bytes; the limit is ${MAX_LEASE_VALUE_BYTES}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(value);
  } catch (err) {
    // JSON.parse quotes the text around the error; control characters in it are refused as such.
    if (hasControlChars(value.replace(/[\t\n\r]/g, ''))) throw new LeaseRejected('control_chars', 'lease value holds control characters');
    throw new LeaseRejected('bad_json', `lease value is not JSON: ${printable((err as Error).message, 120)}`);
  }
  if (!isObject(raw)) throw new LeaseRejected('bad_json', 'lease value is not a JSON object');
  // Without escapes, the decoded strings are the raw text's: one scan of it is enough (JSON refuses raw
  // controls inside strings, and tab, newline and CR outside them are its own whitespace).
  if (value.includes('\\') || hasControlChars(value.replace(/[\t\n\r]/g, ''))) refuseControlChars(raw, 'value');
  const f = goJsonFields(raw, TOP_FIELDS, 'lease value');

  if (typeof f.PublicIP !== 'string') throw new LeaseRejected('bad_public_ip', 'lease PublicIP is missing or not a string');
  try {
    parseUnicastIp4(f.PublicIP);
  } catch (err) {
    throw new LeaseRejected('bad_public_ip', `lease PublicIP: ${(err as Error).message}`);
  }

  let publicIPv6: string | null = null;
  if (f.PublicIPv6 !== undefined && f.PublicIPv6 !== null) {
    if (typeof f.PublicIPv6 !== 'string') throw new LeaseRejected('bad_public_ipv6', 'lease PublicIPv6 is not a string');
    try {
      publicIPv6 = parseUnicastIp6(f.PublicIPv6);
    } catch (err) {
      throw new LeaseRejected('bad_public_ipv6', `lease PublicIPv6: ${(err as Error).message}`);
    }
  }

  // Upstream's udp backend writes no BackendType; Go reads an absent, null or "" one alike.
  const type = f.BackendType ?? '';
  if (typeof type !== 'string') throw new LeaseRejected('bad_backend_type', 'lease BackendType is not a string');
  let backendType: BackendType;
  if (type === '') backendType = 'udp';
  else if (BACKEND_TYPES.includes(type)) backendType = type as BackendType;
  else throw new LeaseRejected('bad_backend_type', `lease BackendType ${quoted(type, 32)} is not supported by this daemon (${BACKEND_TYPES.join(', ')})`);

  let backendData: Record<string, unknown> | null;
  if (backendType === 'vxlan') {
    backendData = decodeVxlanData(f.BackendData);
  } else {
    if (f.BackendData !== undefined && f.BackendData !== null && !isObject(f.BackendData)) {
      throw new LeaseRejected('bad_backend_data', 'lease BackendData is not a JSON object');
    }
    backendData = (f.BackendData as Record<string, unknown> | undefined) ?? null;
  }
  // Dual-stack vxlan: the IPv6 device's VNI and MAC, checked as BackendData is. Other backends publish none.
  let backendV6Data: Record<string, unknown> | null = null;
  if (f.BackendV6Data !== undefined && f.BackendV6Data !== null) {
    if (backendType === 'vxlan') backendV6Data = decodeVxlanData(f.BackendV6Data, 'BackendV6Data');
    else if (!isObject(f.BackendV6Data)) throw new LeaseRejected('bad_backend_data', 'lease BackendV6Data is not a JSON object');
  }
  return { publicIP: f.PublicIP, publicIPv6, backendType, backendData, ...(backendV6Data ? { backendV6Data } : {}) };
}

export function sameAttrs(a: LeaseAttrs, b: LeaseAttrs): boolean {
  return encodeLeaseAttrs(a) === encodeLeaseAttrs(b);
}
