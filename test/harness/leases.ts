// Lease events for tests that drive a backend directly.
import type { Lease, LeaseEvent } from '../../src/subnet/lease.js';

export const added = (lease: Lease): LeaseEvent => ({ type: 'added', lease });
export const removed = (lease: Lease): LeaseEvent => ({ type: 'removed', lease });
