// The daemon's lifecycle: find the underlay interface, wait for a valid network config, prepare the
// backend, claim a lease, write the env file, then follow lease and config changes until stopped.
import type { Server } from 'node:http';
import type { Backend, ExternalInterface } from '../backend/backend.js';
import { createBackend } from '../backend/index.js';
import { BlackholeRoutes } from '../routes/blackhole.js';
import { EtcdRegistry, type Stoppable, etcdErrorFields } from '../etcd/registry.js';
import { type NetfilterRules, checkBrNetfilter, startNetfilterRules } from '../netfilter/index.js';
import { ConfigError, type NetworkConfig, checkNetworkConfig, parseNetworkConfig, sameNetwork } from '../subnet/config.js';
import { previousIpv6Subnet, previousSubnet, writeSubnetEnvFile } from '../subnet/envfile.js';
import type { Lease, LeaseEvent } from '../subnet/lease.js';
import { Wakeup, isAbort, pause, retry } from '../common/retry.js';
import { LeaseManager, NetworkFullError, PublicIpInUseError } from '../subnet/manager.js';
import { loadNodeIdentity, nodeIdentityPath } from '../subnet/node-identity.js';
import type { DaemonOptions } from './flags.js';
import { type CniServer, startCniServer } from './cni-server.js';
import { startHealthServer } from './health.js';
import { findExternalInterface } from './iface.js';
import { type UnderlayAddress, checkUnderlayOutsideNetwork, underlayAddresses } from './underlay-overlap.js';
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
  /** --ip-blackhole-route: a blackhole route for each of our lease's subnets. */
  private blackholes: BlackholeRoutes | null = null;
  private manager: LeaseManager | null = null;
  /** The masquerade and forward rules, in iptables or nftables (both families). */
  private netfilter: NetfilterRules | null = null;
  /** The rules' set-up started for our lease, awaited before ready and before stopping. */
  private netfilterDone: Promise<void> = Promise.resolve();
  private network: NetworkConfig | null = null;
  /** Addresses a network must not contain: our underlay addresses and etcd's (see underlay-overlap.ts). */
  private underlay: UnderlayAddress[] = [];
  private ready = false;
  private startup: Promise<void> | null = null;
  /** Aborted by stop(): ends every retry and wait of the start-up. */
  private readonly life = new AbortController();
  /** Wakes the config wait when the config key changes. */
  private readonly configChanged = new Wakeup();
  private lastProblem = '';
  private readonly status = new SystemdStatus();
  private readonly startedAt = Date.now();

  constructor(
    private readonly opts: DaemonOptions,
    private readonly log: Logger,
  ) {}

  private get stopping(): boolean {
    return this.life.signal.aborted;
  }

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
          return { subnet: own.subnet.toString(), network: this.network.network.toString(), backend: own.attrs.backend.type, publicIP: own.attrs.publicIP, expiration: own.expiration };
        },
        backendStats: () => this.backend?.stats?.() ?? {},
        backendScrape: () => this.backend?.scrape?.() ?? Promise.resolve({}),
      });
    }
    this.underlay = await underlayAddresses(extIface, this.opts.etcd.endpoints);
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
    // As upstream: iptables mode needs br_netfilter for traffic between pods on one bridge; nftables mode does not.
    if (!network.enableNFTables) checkBrNetfilter(network.ipv6 ? [4, 6] : [4]);

    const backend = createBackend({ extIface, network, log: this.log.child({ backend: network.backend.type }) });
    this.backend = backend;
    if (this.opts.ipBlackholeRoute) {
      this.blackholes = new BlackholeRoutes({
        networks: [{ network: network.network, subnetLen: network.subnetLen }, ...(network.ipv6 ? [{ network: network.ipv6.network, subnetLen: network.ipv6.subnetLen }] : [])],
        log: this.log.child({ component: 'blackhole' }),
      });
    }
    const announcement = await backend.prepare();
    const identityFile = nodeIdentityPath(this.opts.subnetFile);
    const { identity, created } = loadNodeIdentity(identityFile);
    this.log.info({ nodeIdentity: identity, file: identityFile, created }, 'node identity');
    const manager = new LeaseManager({
      store: this.registry,
      network,
      attrs: {
        publicIP: extIface.publicIP,
        publicIPv6: network.ipv6 ? (extIface.publicIPv6 ?? null) : null,
        backend: announcement.backend,
        nodeIdentity: identity,
      },
      ttlSeconds: this.opts.subnetLeaseTtlSeconds,
      renewMarginSeconds: this.opts.subnetLeaseRenewMarginMinutes * 60,
      previousSubnet: previousSubnet(this.opts.subnetFile),
      previousIpv6Subnet: network.ipv6 ? previousIpv6Subnet(this.opts.subnetFile) : null,
      log: this.log.child({ component: 'leases' }),
    });
    this.manager = manager;
    await this.startLeasing(manager, extIface, network, announcement.mtu);
    await this.netfilterDone;
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
    const listener = {
      onOwnLease: async (lease: Lease, change: 'claimed' | 'moved') => {
        const v6 = network.ipv6 && lease.ipv6Subnet ? { ipv6Network: network.ipv6.network, ipv6Subnet: lease.ipv6Subnet } : {};
        // As upstream: the env file names the subnet only once its netfilter rules are in place, so that
        // no pod starts (and opens connections that conntrack keeps unmasqueraded) before masquerade
        // is. The rules (a few iptables or nft processes) go in while the backend addresses its device.
        this.netfilterDone = this.netfilterDone
          .then(() => this.applyNetfilterRules(lease, network))
          .catch((err: unknown) => this.log.error({ err: (err as Error).message }, 'cannot set up the netfilter rules'));
        await Promise.all([this.netfilterDone, backend.setOwnLease(lease), this.blackholes?.set([lease.subnet, network.ipv6 ? lease.ipv6Subnet : null])]);
        writeSubnetEnvFile(this.opts.subnetFile, { networks: [network.network], subnet: lease.subnet, mtu, ipMasq: this.opts.ipMasq, ...v6 });
        this.log.info(
          { subnet: lease.subnet.toString(), ...(lease.ipv6Subnet ? { ipv6Subnet: lease.ipv6Subnet.toString() } : {}), publicIP: extIface.publicIP, change },
          'subnet lease held; env file written',
        );
      },
      onLeaseEvents: (events: LeaseEvent[]) => backend.handleLeaseEvents(events),
    };
    try {
      await retry(async () => {
        try {
          await manager.start(listener);
        } catch (err) {
          await manager.stop();
          throw err;
        }
      }, {
        signal: this.life.signal,
        wakeup: () => this.registry.recovered,
        onError: (err) => this.claimProblem(err),
      });
    } catch (err) {
      if (!isAbort(err)) throw err;
    }
  }

  /** Why no lease could be claimed, said once per kind of problem. */
  private claimProblem(err: unknown): void {
    if (err instanceof NetworkFullError) {
      this.problem('error', err.message, {});
    } else if (err instanceof PublicIpInUseError) {
      const { holder } = err;
      this.problem('error', 'our public IP is in use by another node; taking no lease while it holds one', {
        publicIP: err.publicIP, heldSubnet: holder.subnet.toString(), holderIdentity: holder.attrs.nodeIdentity ?? null, err: err.message,
      });
    } else {
      this.problem('warn', 'could not claim a subnet lease; retrying', etcdErrorFields(err), 'claim');
    }
  }

  /** The masquerade and forward rules for our lease, in the front end the config names (both families). */
  private async applyNetfilterRules(lease: Lease, network: NetworkConfig): Promise<void> {
    const subnets = { subnet: lease.subnet, ipv6Subnet: network.ipv6 ? (lease.ipv6Subnet ?? null) : null };
    if (this.netfilter) return this.netfilter.updateSubnets(subnets);
    this.netfilter = await startNetfilterRules(
      {
        mode: network.enableNFTables ? 'nftables' : 'iptables',
        network: network.network,
        ipv6Network: network.ipv6?.network ?? null,
        ipMasq: this.opts.ipMasq,
        forwardRules: this.opts.iptablesForwardRules,
        randomFullyDisable: this.opts.ipMasqFullyRandomDisable,
        resyncMs: this.opts.iptablesResyncSeconds * 1000,
        log: this.log.child({ component: 'netfilter' }),
      },
      subnets,
    );
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
   * null when the daemon is stopped meanwhile (a clean stop, not a failure to start). A config whose
   * network contains our own underlay address or etcd's is invalid here.
   */
  private async waitForConfig(): Promise<NetworkConfig | null> {
    const signal = this.life.signal;
    while (!signal.aborted) {
      let text: string | null;
      try {
        // Read first: it fails within the call deadline when etcd is unreachable, where creating
        // the watch would wait longer. A change between the two is caught by the poll below.
        text = await retry(async () => {
          const read = await this.registry.getConfig();
          this.configWatch ??= await this.registry.watchConfig((t) => this.onConfigChange(t));
          return read;
        }, {
          signal,
          wakeup: () => this.registry.recovered,
          // Keyed without the error text: gRPC stamps each failure with the time.
          onError: (err) => this.problem('warn', 'cannot read the network config from etcd; retrying', etcdErrorFields(err), 'read config'),
        });
      } catch (err) {
        if (isAbort(err)) return null;
        throw err;
      }
      if (text === null) {
        this.problem('error', 'no network config in etcd; waiting for one', { key: `${this.opts.etcd.prefix}/config` });
      } else {
        try {
          const { config, unknownKeys } = checkNetworkConfig(text);
          checkUnderlayOutsideNetwork(config, this.underlay);
          if (unknownKeys.length > 0) this.log.warn({ unknownKeys }, 'the network config has keys upstream does not know; ignored (misspelt?)');
          return config;
        } catch (err) {
          if (!(err instanceof ConfigError)) throw err;
          this.problem('error', 'invalid network config; waiting for a fixed one', { field: err.field, reason: err.reason });
        }
      }
      await pause(CONFIG_POLL_MS, signal, this.configChanged.signal);
    }
    return null;
  }

  /** While running, a config change is checked but never half-applied: a new network needs a restart. */
  private onConfigChange(text: string | null): void {
    const running = this.network;
    if (!running) return this.configChanged.wake(); // still waiting for a valid config

    if (text === null) {
      this.log.error('the network config was deleted from etcd; keeping the running config');
      return;
    }
    try {
      const next = parseNetworkConfig(text);
      checkUnderlayOutsideNetwork(next, this.underlay);
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
    this.life.abort();
    this.ready = false;
    // New CNI requests go to the standalone plugin from now on; those in progress finish meanwhile.
    const cniClosed = this.cni?.close();
    // A stop during start-up waits for the step in flight (each checks `stopping`), so that what it
    // was creating (a lease, netfilter rules) exists and is stopped like the rest.
    await this.startup?.catch(() => undefined);
    await this.manager?.stop();
    await this.netfilterDone;
    await this.configWatch?.stop().catch(() => undefined);
    await this.netfilter?.stop({ removeRules: this.opts.iptablesCleanup });
    await this.backend?.close();
    await this.blackholes?.close();
    await new Promise<void>((r) => (this.health ? this.health.close(() => r()) : r()));
    await cniClosed;
    this.etcd?.close();
  }
}
