// A subnet lease as stored in etcd, in upstream flannel's JSON so that upstream nodes and ours
// can share one cluster (see docs/compatibility.md).
import { printable, quoted } from '../common/printable.js';
import type { Ip4Net } from '../common/ip4.js';
import { parseUnicastIp4 } from '../common/ip4.js';
import type { Ip6Net } from '../common/ip6.js';
import { wgKeyProblem } from '../common/wg-key.js';
import { LeaseRejected, hasControlChars } from './lease-reject.js';
import { MAX_LEASE_VALUE_BYTES, goJsonFields, parseUnicastIp6, parseVtepMac } from './lease-validation.js';

export type BackendType = 'udp' | 'vxlan' | 'host-gw' | 'wireguard';
const BACKEND_TYPES: readonly string[] = ['udp', 'vxlan', 'host-gw', 'wireguard'];

/** The VTEP of one vxlan device, from BackendData (IPv4 device) or BackendV6Data (IPv6 device). */
export interface VxlanVtep {
  /** The VNI the node published; null when its lease names none (upstream's older versions). */
  vni: number | null;
  /** Unicast, lower-case colon form: the only form that reaches the kernel. */
  mac: string;
}

/** One WireGuard device of a node, from BackendData (IPv4 device) or BackendV6Data (IPv6 device). */
export interface WireguardPeerData {
  /** The node's public key, canonical base64 of 32 bytes. */
  publicKey: string;
  /**
   * The device's UDP port; null when the lease names none (upstream before v0.22 wrote only the key;
   * upstream reads a missing or zero port as "the same as my own listen port").
   */
  port: number | null;
}

/**
 * What a lease says about its node's backend, decoded once: what each backend needs of a peer, typed.
 * udp and host-gw publish nothing beyond the node's addresses.
 */
export type LeaseBackend =
  | { type: 'udp' }
  | { type: 'host-gw' }
  | { type: 'vxlan'; vtep: VxlanVtep; vtepV6: VxlanVtep | null }
  | { type: 'wireguard'; peer: WireguardPeerData; peerV6: WireguardPeerData | null };

/** What a node publishes about itself alongside its subnet. Addresses are canonical (parsed exactly). */
export interface LeaseAttrs {
  publicIP: string;
  publicIPv6: string | null;
  backend: LeaseBackend;
  /**
   * The node that wrote the lease (src/subnet/node-identity.ts), as `NodeIdentity`: which lease is its
   * own when two nodes have one PublicIP. Absent or null in leases of upstream flanneld, of older
   * versions, and of reservations; upstream's decoders ignore the field.
   */
  nodeIdentity?: string | null;
}

/** A node identity as written in leases: 128 bits, lower-case hex. */
export const NODE_IDENTITY = /^[0-9a-f]{32}$/;

export interface Lease {
  subnet: Ip4Net;
  /** The IPv6 subnet of a dual-stack lease. */
  ipv6Subnet?: Ip6Net | null;
  attrs: LeaseAttrs;
  /** When the etcd lease runs out; null for a reservation (a key with no etcd lease) or when not tracked. */
  expiration: Date | null;
}

export type LeaseEvent = { type: 'added'; lease: Lease } | { type: 'removed'; lease: Lease };

function vtepWire(vtep: VxlanVtep): Record<string, unknown> {
  return vtep.vni === null ? { VtepMAC: vtep.mac } : { VNI: vtep.vni, VtepMAC: vtep.mac };
}

function wireguardWire(peer: WireguardPeerData): Record<string, unknown> {
  return peer.port === null ? { PublicKey: peer.publicKey } : { PublicKey: peer.publicKey, Port: peer.port };
}

/**
 * Serialises attrs as upstream does: udp leases carry no BackendType/BackendData at all, host-gw ones
 * no BackendData (upstream omits empty data), and only dual-stack vxlan ones BackendV6Data.
 */
export function encodeLeaseAttrs(attrs: LeaseAttrs): string {
  const wire: Record<string, unknown> = { PublicIP: attrs.publicIP, PublicIPv6: attrs.publicIPv6 };
  const { backend } = attrs;
  if (backend.type !== 'udp') {
    wire['BackendType'] = backend.type;
    if (backend.type === 'vxlan') {
      wire['BackendData'] = vtepWire(backend.vtep);
      if (backend.vtepV6) wire['BackendV6Data'] = vtepWire(backend.vtepV6);
    } else if (backend.type === 'wireguard') {
      wire['BackendData'] = wireguardWire(backend.peer);
      if (backend.peerV6) wire['BackendV6Data'] = wireguardWire(backend.peerV6);
    }
  }
  if (attrs.nodeIdentity) wire['NodeIdentity'] = attrs.nodeIdentity;
  return JSON.stringify(wire);
}

function sameVtep(a: VxlanVtep | null, b: VxlanVtep | null): boolean {
  return a === b || (a !== null && b !== null && a.vni === b.vni && a.mac === b.mac);
}

function sameWireguardPeer(a: WireguardPeerData | null, b: WireguardPeerData | null): boolean {
  return a === b || (a !== null && b !== null && a.publicKey === b.publicKey && a.port === b.port);
}

/** Two leases publish the same: addresses, backend data and the node identity. */
export function sameLeaseAttrs(a: LeaseAttrs, b: LeaseAttrs): boolean {
  if (a.publicIP !== b.publicIP || a.publicIPv6 !== b.publicIPv6 || a.backend.type !== b.backend.type) return false;
  if ((a.nodeIdentity ?? null) !== (b.nodeIdentity ?? null)) return false;
  if (a.backend.type === 'vxlan' && b.backend.type === 'vxlan') {
    return sameVtep(a.backend.vtep, b.backend.vtep) && sameVtep(a.backend.vtepV6, b.backend.vtepV6);
  }
  if (a.backend.type === 'wireguard' && b.backend.type === 'wireguard') {
    return sameWireguardPeer(a.backend.peer, b.backend.peer) && sameWireguardPeer(a.backend.peerV6, b.backend.peerV6);
  }
  return true;
}

const TOP_FIELDS = ['PublicIP', 'PublicIPv6', 'BackendType', 'BackendData', 'BackendV6Data', 'NodeIdentity'] as const;
const VXLAN_FIELDS = ['VNI', 'VtepMAC'] as const;
const WIREGUARD_FIELDS = ['PublicKey', 'Port'] as const;

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

/** vxlan's BackendData (or BackendV6Data): the VNI when given, and the VtepMAC in lower case. */
function decodeVxlanVtep(data: unknown, field = 'BackendData'): VxlanVtep {
  if (!isObject(data)) throw new LeaseRejected('bad_backend_data', `vxlan lease: ${field} is missing or not a JSON object`);
  const f = goJsonFields(data, VXLAN_FIELDS, field);
  let vni: number | null = null;
  if (f.VNI !== undefined && f.VNI !== null) {
    if (typeof f.VNI !== 'number' || !Number.isInteger(f.VNI) || f.VNI < 0 || f.VNI > 0xffffff) {
      throw new LeaseRejected('bad_backend_data', `vxlan lease: ${field}.VNI ${printable(JSON.stringify(f.VNI), 32)} is not a VNI (0-16777215)`);
    }
    vni = f.VNI;
  }
  return { vni, mac: parseVtepMac(f.VtepMAC) };
}

/**
 * wireguard's BackendData (or BackendV6Data): the public key, exactly as WireGuard spells keys, and the
 * port when given (upstream writes it as a uint16; 0 or none means "not given").
 */
function decodeWireguardPeer(data: unknown, field = 'BackendData'): WireguardPeerData {
  if (!isObject(data)) throw new LeaseRejected('bad_backend_data', `wireguard lease: ${field} is missing or not a JSON object`);
  const f = goJsonFields(data, WIREGUARD_FIELDS, field);
  const problem = wgKeyProblem(f.PublicKey);
  if (problem !== null) {
    const shown = typeof f.PublicKey === 'string' ? ` ${quoted(f.PublicKey, 60)}` : '';
    throw new LeaseRejected('bad_backend_data', `wireguard lease: ${field}.PublicKey${shown} is not a WireGuard public key: ${problem}`);
  }
  let port: number | null = null;
  if (f.Port !== undefined && f.Port !== null) {
    if (typeof f.Port !== 'number' || !Number.isInteger(f.Port) || f.Port < 0 || f.Port > 65535) {
      throw new LeaseRejected('bad_backend_data', `wireguard lease: ${field}.Port ${printable(JSON.stringify(f.Port), 32)} is not a UDP port (1-65535)`);
    }
    if (f.Port !== 0) port = f.Port;
  }
  return { publicKey: f.PublicKey as string, port };
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

  // Other backends publish no data, or data this daemon does not read; it must still be an object.
  for (const field of ['BackendData', 'BackendV6Data'] as const) {
    const data = f[field];
    if (backendType !== 'vxlan' && backendType !== 'wireguard' && data !== undefined && data !== null && !isObject(data)) {
      throw new LeaseRejected('bad_backend_data', `lease ${field} is not a JSON object`);
    }
  }
  let nodeIdentity: string | null = null;
  if (f.NodeIdentity !== undefined && f.NodeIdentity !== null) {
    if (typeof f.NodeIdentity !== 'string' || !NODE_IDENTITY.test(f.NodeIdentity)) {
      throw new LeaseRejected('bad_node_identity', `lease NodeIdentity ${printable(JSON.stringify(f.NodeIdentity), 48)} is not 32 lower-case hex digits`);
    }
    nodeIdentity = f.NodeIdentity;
  }
  let backend: LeaseBackend;
  if (backendType === 'vxlan') {
    // Dual-stack vxlan: the IPv6 device's VNI and MAC, checked as BackendData is.
    const v6 = f.BackendV6Data;
    backend = { type: 'vxlan', vtep: decodeVxlanVtep(f.BackendData), vtepV6: v6 === undefined || v6 === null ? null : decodeVxlanVtep(v6, 'BackendV6Data') };
  } else if (backendType === 'wireguard') {
    // BackendData is the IPv4 device's, which every network here has (IPv4 is never off).
    const v6 = f.BackendV6Data;
    backend = { type: 'wireguard', peer: decodeWireguardPeer(f.BackendData), peerV6: v6 === undefined || v6 === null ? null : decodeWireguardPeer(v6, 'BackendV6Data') };
  } else {
    backend = { type: backendType };
  }
  return { publicIP: f.PublicIP, publicIPv6, backend, ...(nodeIdentity ? { nodeIdentity } : {}) };
}
