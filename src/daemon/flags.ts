// Command-line flags with upstream flanneld's names and meanings; each is also read from
// FLANNELD_<NAME> (dashes as underscores), as upstream does. Upstream's klog flags (-v, --vmodule,
// ...) are accepted, as unit files carry them. Upstream flags that only matter to its Kubernetes subnet
// manager are accepted and ignored with one warning each, as upstream ignores them in etcd mode; a flag
// that would change the mode (--kube-subnet-mgr), or asks for a feature this daemon does not have, is
// refused with a message that says what to use instead. Parsed with src/common/flag-table.ts.
import { flagsFromEnvironment, normalizeGoStyleFlags } from '../common/cli.js';
import { type FlagSpec, FlagTableError, formatFlagHelp, parseFlagTable } from '../common/flag-table.js';
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from '../common/log.js';
import { VERSION } from '../common/version.js';
import type { EtcdConnectionOptions } from '../etcd/connection.js';
import { ETCD_FLAGS, etcdOptionsFrom } from '../etcd/flags.js';
import { DEFAULT_SUBNET_FILE } from '../subnet/envfile.js';
import { DEFAULT_CNI_SOCKET } from '../cni/protocol.js';

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
  /** --ip-masq-fully-random-disable: plain MASQUERADE even where fully random port mapping is supported. */
  ipMasqFullyRandomDisable: boolean;
  /** --ip-blackhole-route: a blackhole route for our own subnet(s), so that traffic to an unused pod address is dropped here. */
  ipBlackholeRoute: boolean;
  iptablesForwardRules: boolean;
  iptablesResyncSeconds: number;
  iptablesCleanup: boolean;
  healthzIP: string;
  healthzPort: number;
  /** Unix socket on which the CNI plugin is served; '' serves none. */
  cniSocket: string;
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
 * Upstream flags that would change what the daemon is (--kube-subnet-mgr), or that older upstream
 * versions had for features this daemon does not have. Each is refused, naming the flag and the way to
 * get the same result here (see docs/compatibility.md).
 */
export const UNSUPPORTED_UPSTREAM_FLAGS: Readonly<Record<string, string>> = {
  'kube-subnet-mgr': 'leases are kept in etcd only; run with --etcd-endpoints (and the Kubernetes manifest in deploy/kubernetes) instead',
  'use-multi-cluster-cidr': 'the Kubernetes subnet manager is not supported (and upstream removed this flag); leases are kept in etcd (--etcd-endpoints)',
  'auto-detect-ipv6': 'IPv6 auto-detection is not supported; name the address with --public-ipv6 or an IPv6 --iface',
  'charon-executable-path': 'the ipsec backend is not supported; use the vxlan backend',
  'charon-viciurl': 'the ipsec backend is not supported; use the vxlan backend',
};

/**
 * Upstream v0.28.9 flags that only its Kubernetes subnet manager reads: in etcd mode upstream accepts and
 * ignores them, and so do we, with one warning each saying so.
 */
export const IGNORED_UPSTREAM_FLAGS: Readonly<Record<string, string>> = {
  'kubeconfig-file': 'it only configures the Kubernetes subnet manager; leases are kept in etcd',
  'kube-api-url': 'it only configures the Kubernetes subnet manager; leases are kept in etcd',
  'kube-annotation-prefix': 'it only configures the Kubernetes subnet manager; leases are kept in etcd',
  'set-node-network-unavailable': 'it only configures the Kubernetes subnet manager; leases are kept in etcd',
  'net-config-path': 'in etcd mode the network config is read from etcd (<etcd-prefix>/config); store the file there with `flannelctl config set -f FILE`',
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

const DAEMON_FLAGS: Readonly<Record<string, FlagSpec>> = {
  ...ETCD_FLAGS,
  iface: { type: 'list', default: [], describe: 'interface (name or IP) for inter-node traffic; repeatable, first usable wins' },
  'iface-regex': { type: 'list', default: [], describe: 'regex matched against interface names and IPs; repeatable' },
  'iface-can-reach': { type: 'string', describe: 'use the interface that routes to this IP' },
  'public-ip': { type: 'string', describe: 'IP other nodes use to reach this one (default: the interface IP)' },
  'public-ipv6': { type: 'string', describe: 'IPv6 address other nodes use to reach this one (default: the interface IPv6 address)' },
  'subnet-file': { type: 'string', default: DEFAULT_SUBNET_FILE, describe: 'where to write the subnet env file' },
  'subnet-lease-renew-margin': { type: 'number', default: 60, describe: 'renew the lease this many minutes before it expires' },
  'subnet-lease-ttl': { type: 'number', default: 86400, describe: 'etcd lease TTL in seconds (extension; upstream fixes 24 h)' },
  'ip-masq': { type: 'boolean', default: false, describe: 'masquerade traffic leaving the flannel network' },
  'ip-masq-fully-random-disable': { type: 'boolean', default: false, describe: 'masquerade without fully random source ports (MASQUERADE without --random-fully)' },
  'ip-blackhole-route': { type: 'boolean', default: false, describe: "add a blackhole route for this node's subnet (traffic to unused pod addresses is dropped here)" },
  'iptables-forward-rules': { type: 'boolean', default: true, describe: 'add FORWARD accept rules for the network' },
  'iptables-cleanup': { type: 'boolean', default: false, describe: 'remove our iptables or nftables rules on a clean stop (extension; by default they stay)' },
  'iptables-resync': { type: 'number', default: 5, describe: 'seconds between checks of the iptables or nftables rules (at least 1)' },
  // Loopback by default: /metrics and /readyz are for the node itself (probes, a local agent).
  // Upstream binds 0.0.0.0; give --healthz-ip=0.0.0.0 for a Prometheus server elsewhere.
  'healthz-ip': { type: 'string', default: '127.0.0.1', describe: 'address of the health and metrics endpoint' },
  'healthz-port': { type: 'number', default: 0, describe: 'port of /healthz, /readyz and /metrics (0 disables)' },
  'cni-socket': { type: 'string', default: DEFAULT_CNI_SOCKET, describe: 'Unix socket on which the flannel CNI plugin is served (root only; empty: none)' },
  'log-level': { type: 'string', choices: LOG_LEVELS, describe: 'trace, debug, info (default), warn, error, fatal, silent' },
  'log-format': { type: 'string', choices: LOG_FORMATS, default: 'json', describe: 'json lines, or text like upstream flanneld' },
  v: { type: 'number', describe: "upstream's klog verbosity: 0 info, 1-5 debug, 6+ trace (--log-level wins)" },
  ...Object.fromEntries(KLOG_FLAGS.map((flag) => [flag, { type: 'string', bare: true, hidden: true, describe: 'accepted for upstream compatibility; ignored' } satisfies FlagSpec])),
  ...Object.fromEntries(Object.keys(UNSUPPORTED_UPSTREAM_FLAGS).map((flag) => [flag, { type: 'string', bare: true, hidden: true } satisfies FlagSpec])),
  // Read as upstream declares them (--set-node-network-unavailable is a boolean), so that they parse alike.
  ...Object.fromEntries(
    Object.keys(IGNORED_UPSTREAM_FLAGS).map((flag) => [flag, { type: flag === 'set-node-network-unavailable' ? 'boolean' : 'string', hidden: true } satisfies FlagSpec]),
  ),
};

/** The value of a flag of the table, of the type its spec says (defaults are in place). */
const str = (v: Record<string, unknown>, flag: string): string | undefined => v[flag] as string | undefined;
const num = (v: Record<string, unknown>, flag: string): number => v[flag] as number;
const bool = (v: Record<string, unknown>, flag: string): boolean => v[flag] as boolean;
const list = (v: Record<string, unknown>, flag: string): string[] => v[flag] as string[];

/** Refuses values that parse but make no sense; the message names the flag. */
function checkValues(v: Record<string, unknown>): void {
  for (const [flag, instead] of Object.entries(UNSUPPORTED_UPSTREAM_FLAGS)) {
    // A boolean upstream flag turned off (--kube-subnet-mgr=false) asks for nothing we lack.
    const value = str(v, flag);
    if (value !== undefined && value !== 'false') throw new FlagError(`--${flag} is not supported by this daemon: ${instead}`);
  }
  const resync = num(v, 'iptables-resync');
  if (!(Number.isInteger(resync) && resync >= 1)) throw new FlagError(`--iptables-resync must be a whole number of seconds, at least 1 (got ${resync})`);
  const margin = num(v, 'subnet-lease-renew-margin');
  const ttl = num(v, 'subnet-lease-ttl');
  const port = num(v, 'healthz-port');
  const verbosity = v['v'] as number | undefined;
  if (!(margin >= 0)) throw new FlagError('--subnet-lease-renew-margin must be >= 0');
  if (!(ttl >= 10)) throw new FlagError('--subnet-lease-ttl must be at least 10 seconds');
  if (margin * 60 >= ttl) throw new FlagError('--subnet-lease-renew-margin must be shorter than the lease TTL');
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new FlagError('--healthz-port must be 0-65535');
  const cniSocket = str(v, 'cni-socket')!;
  if (cniSocket !== '' && (!cniSocket.startsWith('/') || Buffer.byteLength(cniSocket) > 107)) {
    throw new FlagError('--cni-socket must be an absolute path of at most 107 bytes (a Unix socket address), or empty for none');
  }
  if (verbosity !== undefined && !(Number.isInteger(verbosity) && verbosity >= 0)) throw new FlagError('-v must be a verbosity level: 0, 1, 2, ...');
  for (const re of list(v, 'iface-regex')) {
    try {
      new RegExp(re);
    } catch (err) {
      throw new FlagError(`--iface-regex "${re}": ${(err as Error).message}`);
    }
  }
}

/** Parses flanneld's flags. Prints the help or the version and exits for --help and --version. */
export function parseDaemonFlags(argv: readonly string[], env: Readonly<Record<string, string | undefined>> = process.env): DaemonOptions {
  const args = normalizeGoStyleFlags(argv);
  const fromEnv = flagsFromEnvironment(env, Object.keys(DAEMON_FLAGS), args);
  // Fedora's /etc/sysconfig/flanneld names, for what FLANNELD_* and the flags leave unset.
  for (const [variables, flag] of [[['FLANNEL_ETCD_ENDPOINTS', 'FLANNEL_ETCD'], 'etcd-endpoints'], [['FLANNEL_ETCD_PREFIX', 'FLANNEL_ETCD_KEY'], 'etcd-prefix']] as const) {
    const value = variables.map((v) => env[v]).find((v) => v !== undefined && v !== '');
    if (value !== undefined && !fromEnv.args.some((a) => a.startsWith(`--${flag}=`)) && !args.some((a) => a === `--${flag}` || a.startsWith(`--${flag}=`))) {
      fromEnv.args.push(`--${flag}=${value}`);
    }
  }
  let parsed;
  try {
    parsed = parseFlagTable(DAEMON_FLAGS, [...fromEnv.args, ...args]);
  } catch (err) {
    if (err instanceof FlagTableError) throw new FlagError(err.message);
    throw err;
  }
  if (parsed.kind === 'help') {
    process.stdout.write(formatFlagHelp('Usage: flanneld [flags]   (each flag also as FLANNELD_<FLAG>, e.g. FLANNELD_IFACE)', DAEMON_FLAGS));
    process.exit(0);
  }
  if (parsed.kind === 'version') {
    process.stdout.write(`${VERSION}\n`);
    process.exit(0);
  }
  const v = parsed.values;
  checkValues(v);
  const warnings = [
    ...(fromEnv.unknown.length > 0 ? [`ignoring environment variables that name no flanneld flag: ${fromEnv.unknown.join(', ')}`] : []),
    ...Object.entries(IGNORED_UPSTREAM_FLAGS)
      .filter(([flag]) => v[flag] !== undefined)
      .map(([flag, why]) => `ignoring --${flag}: ${why}`),
  ];
  return {
    etcd: etcdOptionsFrom({
      etcdEndpoints: str(v, 'etcd-endpoints')!,
      etcdPrefix: str(v, 'etcd-prefix')!,
      etcdCafile: str(v, 'etcd-cafile'),
      etcdCertfile: str(v, 'etcd-certfile'),
      etcdKeyfile: str(v, 'etcd-keyfile'),
      etcdUsername: str(v, 'etcd-username'),
      etcdPassword: str(v, 'etcd-password'),
    }),
    // FLANNELD_IFACE may hold a comma list, as with upstream.
    iface: list(v, 'iface').flatMap((i) => i.split(',')).map((i) => i.trim()).filter((i) => i !== ''),
    ifaceRegex: list(v, 'iface-regex'),
    ifaceCanReach: str(v, 'iface-can-reach') ?? null,
    publicIP: str(v, 'public-ip') ?? null,
    publicIPv6: str(v, 'public-ipv6') ?? null,
    subnetFile: str(v, 'subnet-file')!,
    subnetLeaseRenewMarginMinutes: num(v, 'subnet-lease-renew-margin'),
    subnetLeaseTtlSeconds: num(v, 'subnet-lease-ttl'),
    ipMasq: bool(v, 'ip-masq'),
    ipMasqFullyRandomDisable: bool(v, 'ip-masq-fully-random-disable'),
    ipBlackholeRoute: bool(v, 'ip-blackhole-route'),
    iptablesForwardRules: bool(v, 'iptables-forward-rules'),
    iptablesResyncSeconds: num(v, 'iptables-resync'),
    iptablesCleanup: bool(v, 'iptables-cleanup'),
    healthzIP: str(v, 'healthz-ip')!,
    healthzPort: num(v, 'healthz-port'),
    cniSocket: str(v, 'cni-socket')!,
    logLevel: (str(v, 'log-level') as LogLevel | undefined) ?? levelForVerbosity((v['v'] as number | undefined) ?? 0),
    logFormat: str(v, 'log-format') as LogFormat,
    warnings,
  };
}
