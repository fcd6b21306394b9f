// Blackhole routes for our own lease's subnets (upstream's --ip-blackhole-route): traffic to an
// address of our subnet that no pod holds — no more specific route, as on nodes whose CNI routes each
// pod on its own (Canal) — is dropped here instead of following the default route out of the node.
// Kept by a kernel reconciler of its own: added (never replacing a route that holds the destination,
// as upstream adds them), put back within a resync interval when deleted, and when our lease moves the
// old subnet's blackhole goes (upstream leaves it, which would drop traffic to that subnet's new owner).
import type { Logger } from '../common/log.js';
import { type IpNet, type KernelEntry, blackholeRoute, netFamily } from './entries.js';
import { openKernelPath } from './path.js';
import { KernelReconciler } from './reconciler.js';

export interface BlackholeRoutesOptions {
  /** The pod network of each family, with its subnet length: blackholes of a subnet's size inside them are ours. */
  networks: readonly { network: IpNet; subnetLen: number }[];
  log: Logger;
  /** Program this named network namespace instead of our own (tests). */
  netns?: string;
  kernelPath?: 'netlink' | 'iproute2';
  /** How often the routes are checked and put back; default 5000 ms (upstream's resync), 0 disables. */
  resyncIntervalMs?: number;
}

export class BlackholeRoutes {
  private readonly stop = new AbortController();
  private readonly kernel: KernelReconciler;

  constructor(opts: BlackholeRoutesOptions) {
    const lengths = new Map(opts.networks.map((n) => [netFamily(n.network), n.subnetLen]));
    this.kernel = new KernelReconciler({
      name: 'blackhole',
      log: opts.log,
      path: openKernelPath(opts.kernelPath ?? 'netlink', opts.netns, opts.log),
      scope: () => ({
        routeRoots: opts.networks.map((n) => n.network),
        devices: [],
        owns: (e: KernelEntry) => e.kind === 'route' && e.type === 'blackhole' && e.dst.prefixLen === lengths.get(netFamily(e.dst)),
      }),
      signal: this.stop.signal,
      resyncIntervalMs: opts.resyncIntervalMs ?? 5000,
    });
  }

  /**
   * Our lease's subnets (at start, and after a move): one blackhole route each, and none for any other
   * subnet. Resolves once the kernel has been told (a refusal, e.g. a route of the same destination
   * and metric already there, is logged and retried at the next resync).
   */
  async set(subnets: readonly (IpNet | null | undefined)[]): Promise<void> {
    this.kernel.set('own-lease', subnets.filter((s): s is IpNet => !!s).map(blackholeRoute));
    this.kernel.startPeriodic();
    await this.kernel.request();
  }

  stats(): Record<string, number> {
    return { routes: this.kernel.programmed('route'), ...this.kernel.stats() };
  }

  /** Stops the periodic pass; the routes stay, as every kernel entry of ours does across a restart. */
  async close(): Promise<void> {
    this.stop.abort();
    await this.kernel.close();
  }
}
