// Why a lease (key or value) is refused. A leaf module: the key and value decoders throw these, and the
// lease manager counts them by `reason`, which becomes a Prometheus label value (snake_case).
export { hasControlChars } from '../common/printable.js';

export const LEASE_REJECT_REASONS = [
  'bad_key', // the key under subnets/ is not "a.b.c.d-len" exactly (or has host bits set)
  'bad_json', // the value is not a JSON object
  'bad_public_ip', // PublicIP missing, not a canonical dotted quad, or not a unicast address
  'bad_public_ipv6', // PublicIPv6 present but not a unicast IPv6 address
  'bad_backend_type', // BackendType not a string, or a type this daemon does not run
  'bad_backend_data', // BackendData not an object, (vxlan) a VNI out of range, (wireguard) a bad PublicKey or Port
  'bad_vtep_mac', // (vxlan) VtepMAC missing, malformed, multicast or zero
  'too_large', // the value is larger than MAX_LEASE_VALUE_BYTES
  'control_chars', // a control, format or separator character in the key or anywhere in the value
  'wrong_prefix_len', // the key's prefix length differs from the network's SubnetLen
  'outside_network', // the key's subnet does not lie inside Network
  'overlap', // the subnet overlaps our own subnet
  'overlap_older_lease', // the key claims a subnet an older key holds (the older key wins)
  'duplicate_vtep_mac', // (vxlan) the VTEP MAC is ours, or an older lease's (the older lease keeps it)
  'duplicate_public_key', // (wireguard) the public key is ours, or an older lease's (the older lease keeps it)
  'duplicate_public_ip', // another lease carries our own PublicIP (another node configured with our address)
  'bad_node_identity', // NodeIdentity present but not 32 lower-case hex digits
  'key_too_long', // the key name is longer than any subnet key (counted, never kept)
] as const;

export type LeaseRejectReason = (typeof LEASE_REJECT_REASONS)[number];

/** Thrown by the lease decoders; `message` says what is wrong, with any foreign text escaped. */
export class LeaseRejected extends Error {
  constructor(
    readonly reason: LeaseRejectReason,
    message: string,
  ) {
    super(message);
    this.name = 'LeaseRejected';
  }
}
