// Command-line flags with upstream flanneld's names and meanings; each is also read from
// FLANNELD_<NAME> (dashes as underscores), as upstream does. Upstream's klog flags (-v, --vmodule,
// ...) are accepted, as unit files carry them; upstream flags for features this daemon does not have
// are refused with a message that says what to use instead.
import yargs from 'yargs';
import { flagsFromEnvironment, knownFlags, lastBoolean, lastNumber, lastString, normalizeGoStyleFlags } from '../common/cli.js';
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from '../common/log.js';
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
  logFormat: LogFormat;
  /** Things to log once the logger exists (ignored variables), each a full sentence. */
  warnings: string[];
}

/** A flag or flag value that flanneld refuses; main prints the message and exits 1. */
export class FlagError extends Error {
  override name = 'FlagError';
}

/**
 * Upstream flags for what this daemon does not do. Each is refused, naming the flag and the way to
 * get the same result here (see docs/compatibility.md).
 */
export const UNSUPPORTED_UPSTREAM_FLAGS: Readonly<Record<string, string>> = {
  'kube-subnet-mgr': 'leases are kept in etcd only; run with --etcd-endpoints (and the Kubernetes manifest in deploy/kubernetes) instead',
  'kubeconfig-file': 'the Kubernetes subnet manager is not supported; leases are kept in etcd (--etcd-endpoints)',
  'kube-api-url': 'the Kubernetes subnet manager is not supported; leases are kept in etcd (--etcd-endpoints)',
  'kube-annotation-prefix': 'the Kubernetes subnet manager is not supported; leases are kept in etcd (--etcd-endpoints)',
  'set-node-network-unavailable': 'the Kubernetes subnet manager is not supported; leases are kept in etcd (--etcd-endpoints)',
  'use-multi-cluster-cidr': 'the Kubernetes subnet manager is not supported; leases are kept in etcd (--etcd-endpoints)',
  'net-config-path': 'the network config is read from etcd; store the file there with `flannelctl config set -f FILE`',
  'auto-detect-ipv6': 'IPv6 auto-detection is not supported; name the address with --public-ipv6 or an IPv6 --iface',
  'charon-executable-path': 'the ipsec backend is not supported; use the vxlan backend',
  'charon-viciurl': 'the ipsec backend is not supported; use the vxlan backend',
};

/** klog's flags, accepted so that upstream unit files keep working; only -v has an effect. */
const KLOG_FLAGS = ['vmodule', 'log_backtrace_at', 'log_dir', 'log_file', 'logtostderr', 'alsologtostderr', 'stderrthreshold', 'add_dir_header', 'skip_headers'] as const;

/**
 * klog verbosity as a log level: upstream logs its routine events at V(0) and its details at V(1)
 * to V(4) or so; higher levels are for tracing.
 */
export function levelForVerbosity(v: number): LogLevel {
  if (v >= 6) return 'trace';
  if (v >= 1) return 'debug';
  return 'info';
}

function daemonParser(argv: string[]) {
  let y = withEtcdFlags(yargs(argv))
    .scriptName('flanneld')
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
    // Loopback by default: /metrics and /readyz are for the node itself (probes, a local agent).
    // Upstream binds 0.0.0.0; give --healthz-ip=0.0.0.0 for a Prometheus server elsewhere.
    .option('healthz-ip', { type: 'string', default: '127.0.0.1', coerce: lastString, describe: 'address of the health and metrics endpoint' })
    .option('healthz-port', { type: 'number', default: 0, coerce: lastNumber, describe: 'port of /healthz, /readyz and /metrics (0 disables)' })
    .option('log-level', { type: 'string', choices: LOG_LEVELS, coerce: (v: LogLevel | LogLevel[]): LogLevel => (Array.isArray(v) ? v[v.length - 1]! : v), describe: 'trace, debug, info (default), warn, error, fatal, silent' })
    .option('log-format', { type: 'string', choices: LOG_FORMATS, default: 'json' as LogFormat, coerce: (v: LogFormat | LogFormat[]): LogFormat => (Array.isArray(v) ? v[v.length - 1]! : v), describe: 'json lines, or text like upstream flanneld' })
    .option('v', { type: 'number', coerce: lastNumber, describe: "upstream's klog verbosity: 0 info, 1-5 debug, 6+ trace (--log-level wins)" });
  for (const flag of KLOG_FLAGS) y = y.option(flag, { type: 'string', hidden: true, describe: 'accepted for upstream compatibility; ignored' });
  for (const flag of Object.keys(UNSUPPORTED_UPSTREAM_FLAGS)) y = y.option(flag, { type: 'string', hidden: true });
  return y;
}

/** Parses flanneld's flags. Exits with usage on a bad flag, and prints the version for --version. */
export function parseDaemonFlags(argv: readonly string[], env: Readonly<Record<string, string | undefined>> = process.env): DaemonOptions {
  const args = normalizeGoStyleFlags(argv);
  const known = knownFlags(daemonParser([])).filter((k) => k !== 'help' && k !== 'version');
  const fromEnv = flagsFromEnvironment(env, known, args);
  // Fedora's /etc/sysconfig/flanneld names, for what FLANNELD_* and the flags leave unset.
  for (const [variables, flag] of [[['FLANNEL_ETCD_ENDPOINTS', 'FLANNEL_ETCD'], 'etcd-endpoints'], [['FLANNEL_ETCD_PREFIX', 'FLANNEL_ETCD_KEY'], 'etcd-prefix']] as const) {
    const value = variables.map((v) => env[v]).find((v) => v !== undefined && v !== '');
    if (value !== undefined && !fromEnv.args.some((a) => a.startsWith(`--${flag}=`)) && !args.some((a) => a === `--${flag}` || a.startsWith(`--${flag}=`))) {
      fromEnv.args.push(`--${flag}=${value}`);
    }
  }
  const parsed = daemonParser([...fromEnv.args, ...args])
    .version(VERSION)
    .strict()
    .check((a) => {
      for (const [flag, instead] of Object.entries(UNSUPPORTED_UPSTREAM_FLAGS)) {
        const value = a[flag] as unknown;
        // A boolean upstream flag turned off (--kube-subnet-mgr=false) asks for nothing we lack.
        if (value === undefined || value === 'false' || (Array.isArray(value) && value.every((x) => x === 'false'))) continue;
        throw new Error(`--${flag} is not supported by this daemon: ${instead}`);
      }
      if (!(a['subnet-lease-renew-margin'] >= 0)) throw new Error('--subnet-lease-renew-margin must be >= 0');
      if (!(a['subnet-lease-ttl'] >= 10)) throw new Error('--subnet-lease-ttl must be at least 10 seconds');
      if (a['subnet-lease-renew-margin'] * 60 >= a['subnet-lease-ttl']) throw new Error('--subnet-lease-renew-margin must be shorter than the lease TTL');
      if (!Number.isInteger(a['healthz-port']) || a['healthz-port'] < 0 || a['healthz-port'] > 65535) throw new Error('--healthz-port must be 0-65535');
      if (a.v !== undefined && !(Number.isInteger(a.v) && a.v >= 0)) throw new Error('-v must be a verbosity level: 0, 1, 2, ...');
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
    .fail((msg, err) => {
      throw new FlagError(err?.message ?? msg);
    })
    .parseSync();
  const warnings =
    fromEnv.unknown.length > 0 ? [`ignoring environment variables that name no flanneld flag: ${fromEnv.unknown.join(', ')}`] : [];
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
    logLevel: (parsed.logLevel as LogLevel | undefined) ?? levelForVerbosity(parsed.v ?? 0),
    logFormat: parsed.logFormat as LogFormat,
    warnings,
  };
}
