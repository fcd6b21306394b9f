// The daemon's Prometheus metrics, defined once. Components increment them where the event happens;
// /metrics (src/daemon/health.ts) renders the registry in the text format. Names follow Prometheus
// conventions: the flannel_ prefix, units in the name, _total for counters, reasons as labels.
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

/** The registry /metrics serves. Tests may read it with `metricsRegistry.getSingleMetricAsString`. */
export const metricsRegistry = new Registry();

const registers = [metricsRegistry];

export const leaseMetrics = {
  claims: new Counter({ name: 'flannel_lease_claims_total', help: 'Subnet leases claimed (first claim or a move to a new subnet).', registers }),
  reclaims: new Counter({ name: 'flannel_lease_reclaims_total', help: 'Times our lease was lost (deleted, expired, taken) and claimed again.', registers }),
  renewals: new Counter({ name: 'flannel_lease_renewals_total', help: 'Successful renewals of our etcd lease.', registers }),
  renewalFailures: new Counter({ name: 'flannel_lease_renewal_failures_total', help: 'Failed attempts to renew our etcd lease (each is retried).', registers }),
  watchResets: new Counter({ name: 'flannel_lease_watch_resets_total', help: 'Times the lease watch could not resume and the leases were listed again.', registers }),
  invalid: new Counter({
    name: 'flannel_leases_invalid_total',
    help: 'Leases refused by validation, counted once per change of the key, by reason.',
    labelNames: ['reason'] as const,
    registers,
  }),
  remote: new Gauge({ name: 'flannel_leases_remote', help: 'Valid remote leases known to this node.', registers }),
};

export const etcdMetrics = {
  up: new Gauge({ name: 'flannel_etcd_up', help: '1 while etcd answers, 0 from the first failed call until one succeeds.', registers }),
  outages: new Counter({ name: 'flannel_etcd_outages_total', help: 'Times etcd became unreachable.', registers }),
};

export const kernelMetrics = {
  peers: new Gauge({ name: 'flannel_backend_peers', help: 'Remote nodes programmed into the kernel by the backend.', labelNames: ['backend'] as const, registers }),
  errors: new Counter({
    name: 'flannel_kernel_programming_errors_total',
    help: 'Kernel entries (route, neighbour, fdb, address, link) the kernel refused; each is retried by the next resync.',
    labelNames: ['kind'] as const,
    registers,
  }),
  applySeconds: new Histogram({
    name: 'flannel_kernel_programming_duration_seconds',
    help: 'Time to apply one batch of kernel changes.',
    labelNames: ['reason'] as const,
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
    registers,
  }),
  changes: new Counter({ name: 'flannel_kernel_changes_total', help: 'Kernel entries added, replaced or removed.', labelNames: ['kind'] as const, registers }),
  repairs: new Counter({ name: 'flannel_kernel_repairs_total', help: 'Kernel entries restored by a resync (changed or removed by someone else).', registers }),
};

export const cniMetrics = {
  requests: new Counter({
    name: 'flannel_cni_requests_total',
    help: 'CNI requests received on the daemon socket, by command and outcome: ok (exit 0), error (a CNI error result), unavailable (handed back to the standalone plugin), refused (malformed, oversized or incomplete).',
    labelNames: ['command', 'outcome'] as const,
    registers,
  }),
};
