// PLACEHOLDER: replaced by the real vxlan backend.
import type { Backend, BackendAnnouncement, BackendContext } from '../backend.js';
import type { VxlanBackendConfig } from '../../subnet/config.js';
import type { Lease, LeaseEvent } from '../../subnet/lease.js';

export class VxlanBackend implements Backend {
  constructor(
    readonly ctx: BackendContext,
    readonly config: VxlanBackendConfig,
  ) {}
  async prepare(): Promise<BackendAnnouncement> {
    throw new Error('vxlan backend not implemented yet');
  }
  async setOwnLease(_lease: Lease): Promise<void> {}
  async handleLeaseEvents(_events: readonly LeaseEvent[]): Promise<void> {}
  async close(): Promise<void> {}
}
