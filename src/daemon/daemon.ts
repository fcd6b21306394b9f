// The daemon's lifecycle: find the underlay interface, wait for a valid network config, prepare the
// backend, claim a lease, write the env file, then follow lease and config changes until stopped.
import type { Server } from 'node:http';
import type { Backend, ExternalInterface } from '../backend/backend.js';
import { createBackend } from '../backend/index.js';
import { EtcdRegistry, type Stoppable, etcdErrorFields } from '../etcd/registry.js';
import { type IptablesRules, startIptablesRules } from '../iptables/index.js';
import { ConfigError, type NetworkConfig, checkNetworkConfig, parseNetworkConfig, sameNetwork } from '../subnet/config.js';
import { previousIpv6Subnet, previousSubnet, writeSubnetEnvFile } from '../subnet/envfile.js';
import type { Lease } from '../subnet/lease.js';
import { Backoff, RETRY_MAX_MS } from '../common/retry.js';
import { LeaseManager, NetworkFullError } from '../subnet/manager.js';
import type { DaemonOptions } from './flags.js';
import { type CniServer, startCniServer } from './cni-server.js';
import { startHealthServer } from './health.js';
import { findExternalInterface } from './iface.js';
import type { Logger } from '../common/log.js';
import { SystemdStatus, notifySystemd } from './sdnotify.js';

const CONFIG_POLL_MS = 5_000;

export class Daemon {
  /** Made in run(), so that a bad TLS file is reported like any other start-up failure. */
  private etcd: EtcdRegistry | null = null;
  private health: Server | null = null;
  private cni: CniServer | null = null;
  private configWatch: Stoppable | null = null;
  private backend: Backend | null = null;
  private manager: LeaseManager | null = null;
  private iptables: IptablesRules | null = null;
  /** The iptables set-up started for our lease, awaited before ready and before stopping. */
  private iptablesDone: Promise<void> = Promise.resolve();
  /** The ip6tables half of a dual-stack node's rules. */
  private ip6tables: IptablesRules | null = null;
  private network: NetworkConfig | null = null;
  private ready = false;
  private startup: Promise<void> | null = null;
  private stopping = false;
  /** Wakes the config wait when the config key changes. */
  private configChanged: (() => void) | null = null;
  private lastProblem = '';
  private readonly status = new SystemdStatus();
  private readonly startedAt = Date.now();

  constructor(
    private readonly opts: DaemonOptions,
    private readonly log: Logger,
  ) {}

  private get registry(): EtcdRegistry {
    if (!this.etcd) throw new Error('the daemon is not running');
    return this.etcd;
  }

  /** Starts the daemon; resolves once it is ready (or stopped before that). */
  run(): Promise<void> {
    this.startup ??= this.start();
    return this.startup;
  }

  private async start(): Promise<void> {
    this.status.set(`starting; etcd ${this.opts.etcd.endpoints.join(',')}`);
    this.etcd = new EtcdRegistry(this.opts.etcd, this.log);
    const extIface = await findExternalInterface(this.opts);
    this.log.info(
      { iface: extIface.name, ifaceIP: extIface.ifaceIP, publicIP: extIface.publicIP, publicIPv6: extIface.publicIPv6 ?? null, mtu: extIface.mtu },
      'using underlay interface',
    );
    if (this.opts.healthzPort > 0) {
      this.health = await startHealthServer(this.opts.healthzIP, this.opts.healthzPort, {
        ready: () => this.ready,
        lease: () => {
          const own = this.manager?.ownLease;
          if (!own || !this.network) return null;
          return { subnet: own.subnet.toString(), network: this.network.network.toString(), backend: own.attrs.backendType, publicIP: own.attrs.publicIP, expiration: own.expiration };
        },
        backendStats: () => this.backend?.stats?.() ?? {},
      });
    }
    await this.startCni();
    const network = await this.waitForConfig();
    if (network === null || this.stopping) return;
    this.network = network;
    this.log.info(
      {
        network: network.network.toString(), subnetLen: network.subnetLen, backend: network.backend.type,
        ...(network.ipv6 ? { ipv6Network: network.ipv6.network.toString(), ipv6SubnetLen: network.ipv6.subnetLen } : {}),
      },
      'network config',
    );
    if (network.ipv6 && !extIface.publicIPv6) {
      throw new Error(`EnableIPv6 is set but ${extIface.name} has no global IPv6 address: give it one, or name one with --public-ipv6`);
    }

    const backend = createBackend({ extIface, network, log: this.log.child({ backend: network.backend.type }) });
    this.backend = backend;
    const announcement = await backend.prepare();
    const manager = new LeaseManager({
      store: this.registry,
      network,
      attrs: {
        publicIP: extIface.publicIP,
        publicIPv6: network.ipv6 ? (extIface.publicIPv6 ?? null) : null,
        backendType: network.backend.type,
        backendData: announcement.backendData,
        ...(network.ipv6 && announcement.backendV6Data ? { backendV6Data: announcement.backendV6Data } : {}),
      },
      ttlSeconds: this.opts.subnetLeaseTtlSeconds,
      renewMarginSeconds: this.opts.subnetLeaseRenewMarginMinutes * 60,
      previousSubnet: previousSubnet(this.opts.subnetFile),
      previousIpv6Subnet: network.ipv6 ? previousIpv6Subnet(this.opts.subnetFile) : null,
      log: this.log.child({ component: 'leases' }),
    });
    this.manager = manager;
    await this.startLeasing(manager, extIface, network, announcement.mtu);
    await this.iptablesDone;
    if (this.stopping) return;
    this.ready = true;
    this.log.info({ subnetFile: this.opts.subnetFile, startupMs: Date.now() - this.startedAt }, 'ready');
    await notifySystemd(`READY=1\nSTATUS=ready; subnet ${this.manager?.ownLease?.subnet.toString() ?? '?'}, ${network.backend.type} backend`);
  }

  /**
   * Serves the CNI plugin from the start: the plugin needs only the env file (a previous run's, while
   * this one waits for etcd). A socket that cannot be served is logged, and the daemon runs without
   * it: the plugin's client then runs the standalone plugin, as when flanneld is not running.
   */
  private async startCni(): Promise<void> {
    if (this.opts.cniSocket === '') return;
    const log = this.log.child({ component: 'cni' });
    try {
      const server = await startCniServer({ path: this.opts.cniSocket, log });
      if (this.stopping) await server.close();
      else this.cni = server;
    } catch (err) {
      log.error({ socket: this.opts.cniSocket, err: (err as Error).message }, 'cannot serve the CNI plugin; the plugin runs standalone');
    }
  }

  private async startLeasing(manager: LeaseManager, extIface: ExternalInterface, network: NetworkConfig, mtu: number): Promise<void> {
    const backend = this.backend!;
    const backoff = new Backoff();
    while (!this.stopping) {
      try {
        await manager.start({
          onOwnLease: async (lease, change) => {
            const v6 = network.ipv6 && lease.ipv6Subnet ? { ipv6Network: network.ipv6.network, ipv6Subnet: lease.ipv6Subnet } : {};
            writeSubnetEnvFile(this.opts.subnetFile, { networks: [network.network], subnet: lease.subnet, mtu, ipMasq: this.opts.ipMasq, ...v6 });
            this.log.info(
              { subnet: lease.subnet.toString(), ...(lease.ipv6Subnet ? { ipv6Subnet: lease.ipv6Subnet.toString() } : {}), publicIP: extIface.publicIP, change },
              'subnet lease held; env file written',
            );
            await backend.setOwnLease(lease);
            // The rules (a few iptables processes) go in while the backend programs the peers, not before:
            // start-up waits for both before it says ready.
            this.iptablesDone = this.iptablesDone
              .then(() => this.applyIptables(lease, network))
              .catch((err: unknown) => this.log.error({ err: (err as Error).message }, 'cannot set up the iptables rules'));
          },
          onLeaseEvents: (events) => backend.handleLeaseEvents(events),
        });
        return;
      } catch (err) {
        const message = (err as Error).message;
        if (err instanceof NetworkFullError) this.problem('error', message, {});
        else this.problem('warn', 'could not claim a subnet lease; retrying', etcdErrorFields(err), 'claim');
        await manager.stop();
        await this.registry.backoff(err instanceof NetworkFullError ? RETRY_MAX_MS : backoff.next());
      }
    }
  }

  private async applyIptables(lease: Lease, network: NetworkConfig): Promise<void> {
    await this.applyIp6tables(lease, network);
    if (this.iptables) return this.iptables.updateSubnet(lease.subnet);
    if (!this.opts.ipMasq && !this.opts.iptablesForwardRules) return;
    this.iptables = await startIptablesRules({
      network: network.network,
      subnet: lease.subnet,
      ipMasq: this.opts.ipMasq,
      forwardRules: this.opts.iptablesForwardRules,
      log: this.log.child({ component: 'iptables' }),
      resyncMs: this.opts.iptablesResyncSeconds * 1000,
    });
  }

  /** Dual stack: the same forward and masquerade rules for the IPv6 network, through ip6tables. */
  private async applyIp6tables(lease: Lease, network: NetworkConfig): Promise<void> {
    const subnet = lease.ipv6Subnet;
    if (!network.ipv6 || !subnet) return;
    if (this.ip6tables) return this.ip6tables.updateSubnet(subnet);
    if (!this.opts.ipMasq && !this.opts.iptablesForwardRules) return;
    this.ip6tables = await startIptablesRules({
      network: network.ipv6.network,
      subnet,
      ipv6: true,
      ipMasq: this.opts.ipMasq,
      forwardRules: this.opts.iptablesForwardRules,
      log: this.log.child({ component: 'ip6tables' }),
      resyncMs: this.opts.iptablesResyncSeconds * 1000,
    });
  }

  /** Logs a problem once, not on every retry; a different problem is logged again. */
  private problem(level: 'warn' | 'error', msg: string, fields: Record<string, unknown>, key = msg + JSON.stringify(fields)): void {
    if (key === this.lastProblem) return;
    this.lastProblem = key;
    this.log[level](fields, msg);
    this.status.set([msg, ...Object.entries(fields).map(([k, v]) => `${k}: ${String(v)}`)].join('; '));
  }

  /**
   * Returns the first valid config, logging each distinct problem once while waiting for a fix;
   * null when the daemon is stopped meanwhile (a clean stop, not a failure to start).
   */
  private async waitForConfig(): Promise<NetworkConfig | null> {
    const backoff = new Backoff();
    while (!this.stopping) {
      try {
        // Read first: it fails within the call deadline when etcd is unreachable, where creating
        // the watch would wait longer. A change between the two is caught by the poll below.
        const text = await this.registry.getConfig();
        if (!this.configWatch) this.configWatch = await this.registry.watchConfig((t) => this.onConfigChange(t));
        if (text === null) {
          this.problem('error', 'no network config in etcd; waiting for one', { key: `${this.opts.etcd.prefix}/config` });
        } else {
          const { config, unknownKeys } = checkNetworkConfig(text);
          if (unknownKeys.length > 0) this.log.warn({ unknownKeys }, 'the network config has keys upstream does not know; ignored (misspelt?)');
          return config;
        }
      } catch (err) {
        if (err instanceof ConfigError) {
          this.problem('error', 'invalid network config; waiting for a fixed one', { field: err.field, reason: err.reason });
        } else {
          // Keyed without the error text: gRPC stamps each failure with the time.
          this.problem('warn', 'cannot read the network config from etcd; retrying', etcdErrorFields(err), 'read config');
          await this.registry.backoff(backoff.next());
          continue;
        }
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, CONFIG_POLL_MS);
        this.configChanged = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.configChanged = null;
    }
    return null;
  }

  /** While running, a config change is checked but never half-applied: a new network needs a restart. */
  private onConfigChange(text: string | null): void {
    if (this.configChanged) return this.configChanged();
    const running = this.network;
    if (!running) return;
    if (text === null) {
      this.log.error('the network config was deleted from etcd; keeping the running config');
      return;
    }
    try {
      const next = parseNetworkConfig(text);
      if (!sameNetwork(next, running)) {
        this.log.error(
          { running: running.network.toString(), new: next.network.toString(), backend: next.backend.type },
          'the network config changed while running; not applied: restart the daemon (and its pods) to move to the new network',
        );
      }
    } catch (err) {
      if (err instanceof ConfigError) this.log.error({ field: err.field, reason: err.reason }, 'the new network config is invalid; keeping the running config');
    }
  }

  /** Stops cleanly. The lease stays in etcd (as upstream does) so a restart keeps its subnet. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.ready = false;
    this.configChanged?.();
    this.etcd?.interruptBackoffs();
    // New CNI requests go to the standalone plugin from now on; those in progress finish meanwhile.
    const cniClosed = this.cni?.close();
    // A stop during start-up waits for the step in flight (each checks `stopping`), so that what it
    // was creating (a lease, iptables rules) exists and is stopped like the rest.
    await this.startup?.catch(() => undefined);
    await this.manager?.stop();
    await this.iptablesDone;
    await this.configWatch?.stop().catch(() => undefined);
    await this.iptables?.stop({ removeRules: this.opts.iptablesCleanup });
    await this.ip6tables?.stop({ removeRules: this.opts.iptablesCleanup });
    await this.backend?.close();
    await new Promise<void>((r) => (this.health ? this.health.close(() => r()) : r()));
    await cniClosed;
    this.etcd?.close();
  }
}
