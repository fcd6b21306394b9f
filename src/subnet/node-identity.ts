// This node's identity, written into its lease (NodeIdentity): of the leases carrying our PublicIP,
// only one with our identity (or with none: upstream's, an older version's, a reservation) is ours.
// Two nodes given one --public-ip (a copied config, a typo) otherwise take each other's lease at etcd
// speed, or, as upstream does, share one subnet.
//
// The identity is created once and kept in a file beside the env file. A host's /run is emptied by a
// reboot, so the first value is derived from /etc/machine-id and the file's own path rather than drawn
// at random: the same host and flag values give the same identity again, and two nodes on one host
// (network namespaces, which share /etc/machine-id) differ by their env file's directory. Without a
// machine ID it is random, kept as long as the file is.
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { writeFileAtomic } from '../common/atomic-file.js';
import { NODE_IDENTITY } from './lease.js';

/** The file's name, in the env file's directory. */
export const NODE_IDENTITY_FILE = 'node-identity';
const MACHINE_ID_FILE = '/etc/machine-id';

/** Where the identity of the node whose env file is `subnetFile` is kept. */
export function nodeIdentityPath(subnetFile: string): string {
  return join(dirname(resolve(subnetFile)), NODE_IDENTITY_FILE);
}

function readTrimmed(path: string): string | null {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return null;
  }
}

/**
 * The identity kept at `path`, created there first when missing or unreadable as one. Throws when the
 * file cannot be written (the env file beside it could not be either).
 */
export function loadNodeIdentity(path: string, machineIdFile = MACHINE_ID_FILE): { identity: string; created: boolean } {
  const kept = readTrimmed(path);
  if (kept !== null && NODE_IDENTITY.test(kept)) return { identity: kept, created: false };
  const machineId = readTrimmed(machineIdFile);
  const identity = machineId
    ? createHash('sha256').update(`flanneld node identity\n${machineId}\n${resolve(path)}\n`).digest('hex').slice(0, 32)
    : randomBytes(16).toString('hex');
  writeFileAtomic(path, `${identity}\n`);
  return { identity, created: true };
}
