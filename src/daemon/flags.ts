// Command-line flags with upstream flanneld's names and meanings; each is also read from
// FLANNELD_<NAME> (dashes as underscores), as upstream does.
import yargs from 'yargs';
import { lastBoolean, lastNumber, lastString, normalizeGoStyleFlags } from '../common/cli.js';
import { LOG_LEVELS, type LogLevel } from '../common/log.js';
import { VERSION } from '../common/version.js';
import type { EtcdConnectionOptions } from '../etcd/connection.js';
import { etcdOptionsFrom, withEtcdFlags } from '../etcd/flags.js';
import { DEFAULT_SUBNET_FILE } from '../subnet/envfile.js';

export interface DaemonOptions {
  etcd: EtcdConnectionOptions;
  iface: string[];
  ifaceRegex: string[];
  ifaceCanReach: string | null;
  publicIP: string | null;
  /** --public-ipv6 (dual stack). */
  publicIPv6: string | null;
  subnetFile: string;
  subnetLeaseRenewMarginMinutes: number;
  subnetLeaseTtlSeconds: number;
  ipMasq: boolean;
  iptablesForwardRules: boolean;
  iptablesResyncSeconds: number;
  iptablesCleanup: boolean;
  healthzIP: string;
  healthzPort: number;
  logLevel: LogLevel;
}

/** Parses flanneld's flags. Exits with usage on a bad flag, and prints the version for --version. */
export function parseDaemonFlags(argv: readonly string[]): DaemonOptions {
  const parsed = withEtcdFlags(yargs(normalizeGoStyleFlags(argv)))
    .scriptName('flanneld')
    .env('FLANNELD')
    .option('iface', { type: 'string', array: true, default: [] as string[], describe: 'interface (name or IP) for inter-node traffic; repeatable, first usable wins' })
    .option('iface-regex', { type: 'string', array: true, default: [] as string[], describe: 'regex matched against interface names and IPs; repeatable' })
    .option('iface-can-reach', { type: 'string', coerce: lastString, describe: 'use the interface that routes to this IP' })
    .option('public-ip', { type: 'string', coerce: lastString, describe: 'IP other nodes use to reach this one (default: the interface IP)' })
    .option('public-ipv6', { type: 'string', coerce: lastString, describe: 'IPv6 address other nodes use to reach this one (default: the interface IPv6 address)' })
    .option('subnet-file', { type: 'string', default: DEFAULT_SUBNET_FILE, coerce: lastString, describe: 'where to write the subnet env file' })
    .option('subnet-lease-renew-margin', { type: 'number', default: 60, coerce: lastNumber, describe: 'renew the lease this many minutes before it expires' })
    .option('subnet-lease-ttl', { type: 'number', default: 86400, coerce: lastNumber, describe: 'etcd lease TTL in seconds (extension; upstream fixes 24 h)' })
    .option('ip-masq', { type: 'boolean', default: false, coerce: lastBoolean, describe: 'masquerade traffic leaving the flannel network' })
    .option('iptables-forward-rules', { type: 'boolean', default: true, coerce: lastBoolean, describe: 'add FORWARD accept rules for the network' })
    .option('iptables-cleanup', { type: 'boolean', default: false, coerce: lastBoolean, describe: 'remove our iptables rules on a clean stop (extension; by default they stay)' })
    .option('iptables-resync', { type: 'number', default: 5, coerce: lastNumber, describe: 'seconds between checks of the iptables rules' })
    .option('healthz-ip', { type: 'string', default: '0.0.0.0', coerce: lastString, describe: 'address of the health endpoint' })
    .option('healthz-port', { type: 'number', default: 0, coerce: lastNumber, describe: 'port of /healthz, /readyz and /metrics (0 disables)' })
    .option('log-level', { type: 'string', choices: LOG_LEVELS, default: 'info' as LogLevel, coerce: (v: LogLevel | LogLevel[]): LogLevel => (Array.isArray(v) ? v[v.length - 1]! : v) })
    .option('kube-subnet-mgr', { type: 'boolean', default: false, hidden: true, coerce: lastBoolean })
    .version(VERSION)
    .strict()
    .check((a) => {
      if (a['kube-subnet-mgr']) throw new Error('--kube-subnet-mgr is not supported: this daemon stores leases in etcd only');
      if (!(a['subnet-lease-renew-margin'] >= 0)) throw new Error('--subnet-lease-renew-margin must be >= 0');
      if (!(a['subnet-lease-ttl'] >= 10)) throw new Error('--subnet-lease-ttl must be at least 10 seconds');
      if (a['subnet-lease-renew-margin'] * 60 >= a['subnet-lease-ttl']) throw new Error('--subnet-lease-renew-margin must be shorter than the lease TTL');
      if (!Number.isInteger(a['healthz-port']) || a['healthz-port'] < 0 || a['healthz-port'] > 65535) throw new Error('--healthz-port must be 0-65535');
      for (const re of a['iface-regex']) {
        try {
          new RegExp(re);
        } catch (err) {
          throw new Error(`--iface-regex "${re}": ${(err as Error).message}`);
        }
      }
      return true;
    })
    .help()
    .parseSync();
  return {
    etcd: etcdOptionsFrom(parsed),
    // FLANNELD_IFACE may hold a comma list, as with upstream.
    iface: parsed.iface.flatMap((i) => i.split(',')).map((i) => i.trim()).filter((i) => i !== ''),
    ifaceRegex: parsed.ifaceRegex,
    ifaceCanReach: parsed.ifaceCanReach ?? null,
    publicIP: parsed.publicIp ?? null,
    publicIPv6: parsed.publicIpv6 ?? null,
    subnetFile: parsed.subnetFile,
    subnetLeaseRenewMarginMinutes: parsed.subnetLeaseRenewMargin,
    subnetLeaseTtlSeconds: parsed.subnetLeaseTtl,
    ipMasq: parsed.ipMasq,
    iptablesForwardRules: parsed.iptablesForwardRules,
    iptablesResyncSeconds: parsed.iptablesResync,
    iptablesCleanup: parsed.iptablesCleanup,
    healthzIP: parsed.healthzIp,
    healthzPort: parsed.healthzPort,
    logLevel: parsed.logLevel as LogLevel,
  };
}
