// PLACEHOLDER: replaced by the real udp backend.
import type { Backend, BackendAnnouncement, BackendContext } from '../backend.js';
import type { UdpBackendConfig } from '../../subnet/config.js';
import type { Lease, LeaseEvent } from '../../subnet/lease.js';

export class UdpBackend implements Backend {
  constructor(
    readonly ctx: BackendContext,
    readonly config: UdpBackendConfig,
  ) {}
  async prepare(): Promise<BackendAnnouncement> {
    throw new Error('udp backend not implemented yet');
  }
  async setOwnLease(_lease: Lease): Promise<void> {}
  async handleLeaseEvents(_events: readonly LeaseEvent[]): Promise<void> {}
  async close(): Promise<void> {}
}
