// `flannelctl docker-opts`: upstream's mk-docker-opts.sh (deploy/mk-docker-opts.sh is a shim that
// takes its flags). Turns flanneld's subnet env file into Docker daemon options (--bip, --mtu,
// --ip-masq) in an env file that docker.service reads (EnvironmentFile=) and expands into dockerd's
// command line ($DOCKER_OPTS). The output is the script's, byte for byte.
import type { CommandModule } from 'yargs';
import { writeFileAtomic } from '../common/atomic-file.js';
import { type RouteEntry, formatIp, sameNet } from '../routes/entries.js';
import { readRoutesWithin } from '../routes/route.js';
import { DEFAULT_SUBNET_FILE, SubnetEnvError, bridgeAddress, readSubnetEnvFile } from '../subnet/envfile.js';
import { Ip4Net } from '../common/ip4.js';
import { Ip6Net } from '../common/ip6.js';

export const DEFAULT_DOCKER_ENV_FILE = '/run/docker_opts.env';
export const DEFAULT_COMBINED_KEY = 'DOCKER_OPTS';

export interface DockerOptsOptions {
  /** -k: name of the combined variable. */
  combinedKey: string;
  /** -i: write each option as its own DOCKER_OPT_* variable. */
  individual: boolean;
  /** -c: write the combined variable. Neither -i nor -c means both, as upstream. */
  combined: boolean;
  /** False with -m: leave --ip-masq out (for Dockers that do not know it). */
  ipMasq: boolean;
  /**
   * Variables of the calling environment: like the upstream script, the combined value starts with the
   * current value of the combined key, and DOCKER_OPT_* variables already set are passed on too.
   */
  environment?: Record<string, string | undefined>;
}

/** A value that can sit between double quotes in an env file read by systemd or a shell. */
function quotable(name: string, value: string): string {
  if (/["\\$`\n]/.test(value)) throw new Error(`${name} contains a character that cannot be quoted safely: ${JSON.stringify(value)}`);
  return value;
}

/**
 * The Docker env file for a subnet env file's variables, byte for byte what upstream's
 * mk-docker-opts.sh writes. Docker masquerades by default: when flanneld masquerades
 * (FLANNEL_IPMASQ=true) Docker must not (--ip-masq=false), and when flanneld does not, Docker must
 * (--ip-masq=true, even if its own config says otherwise).
 */
export function formatDockerOpts(flannelEnv: Record<string, string>, opts: DockerOptsOptions): string {
  const environment = opts.environment ?? {};
  const both = !opts.individual && !opts.combined;
  const individual = both || opts.individual;
  const combined = both || opts.combined;
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(opts.combinedKey)) throw new Error(`-k ${JSON.stringify(opts.combinedKey)} is not a variable name`);

  const options = new Map<string, string>();
  for (const [name, value] of Object.entries(environment)) {
    if (name.startsWith('DOCKER_OPT_') && value !== undefined) options.set(name, value);
  }
  if (flannelEnv['FLANNEL_SUBNET']) options.set('DOCKER_OPT_BIP', `--bip=${flannelEnv['FLANNEL_SUBNET']}`);
  if (flannelEnv['FLANNEL_MTU']) options.set('DOCKER_OPT_MTU', `--mtu=${flannelEnv['FLANNEL_MTU']}`);
  const masq = flannelEnv['FLANNEL_IPMASQ'];
  if (masq && opts.ipMasq) {
    if (masq !== 'true' && masq !== 'false') throw new Error(`Invalid value of FLANNEL_IPMASQ: ${masq}`);
    options.set('DOCKER_OPT_IPMASQ', `--ip-masq=${masq === 'true' ? 'false' : 'true'}`);
  }
  // Dual stack (our addition; upstream's script has no IPv6): Docker's bridge takes the subnet's ::1
  // and containers their IPv6 addresses from the node's IPv6 subnet.
  if (flannelEnv['FLANNEL_IPV6_SUBNET']) {
    options.set('DOCKER_OPT_IPV6', `--ipv6 --fixed-cidr-v6=${Ip6Net.parse(flannelEnv['FLANNEL_IPV6_SUBNET'], true).toString()}`);
  }

  const lines: string[] = [];
  // As the script: the combined key's current value (and a space) if it has one, then " value" for
  // each option, names sorted.
  const current = environment[opts.combinedKey] ?? '';
  let all = current === '' ? '' : `${current} `;
  for (const name of [...options.keys()].sort()) {
    const value = quotable(name, options.get(name)!);
    if (individual) lines.push(`${name}="${value}"`);
    all += ` ${value}`;
  }
  if (combined) lines.push(`${opts.combinedKey}="${quotable(opts.combinedKey, all)}"`);
  return lines.map((l) => l + '\n').join('');
}

/**
 * A route to our own subnet through a gateway would take the bridge's traffic away from it: the script
 * refuses then (after writing the file), and so do we.
 */
export async function conflictingRoute(flannelSubnet: string): Promise<RouteEntry | null> {
  const subnet = Ip4Net.parse(flannelSubnet, true);
  let routes: RouteEntry[];
  try {
    routes = await readRoutesWithin(subnet);
  } catch {
    return null; // no iproute2 here: the script's check finds nothing then either
  }
  return routes.find((r) => sameNet(r.dst, subnet) && r.via !== null) ?? null;
}

/**
 * The subnet env file's values as docker-opts uses them. Parsed (and so validated) by the shared
 * reader; a missing or malformed file is an error, since Docker must not start with a wrong --bip.
 */
export function readFlannelEnv(path: string): Record<string, string> {
  let env;
  try {
    env = readSubnetEnvFile(path);
  } catch (err) {
    if (!(err instanceof SubnetEnvError)) throw err;
    if (err.kind === 'missing') throw new Error(`subnet file ${path} does not exist (is flanneld running and has it written it?)`);
    if (err.missingVars.length > 0) throw new Error(`subnet file ${path} has no ${err.missingVars.join(', ')}`);
    throw err;
  }
  return {
    FLANNEL_SUBNET: bridgeAddress(env.subnet),
    FLANNEL_MTU: String(env.mtu),
    FLANNEL_IPMASQ: String(env.ipMasq),
    ...(env.ipv6Subnet ? { FLANNEL_IPV6_SUBNET: env.ipv6Subnet.firstHostCidr() } : {}),
  };
}

interface DockerOptsArgs {
  'subnet-file': string;
  'docker-env-file': string;
  'combined-key': string;
  individual: boolean;
  combined: boolean;
  'skip-ip-masq': boolean;
}

export const dockerOptsCommand: CommandModule<object, DockerOptsArgs> = {
  command: 'docker-opts',
  describe: 'write Docker daemon options (--bip, --mtu, --ip-masq; --ipv6 --fixed-cidr-v6 in dual stack) from the subnet env file (mk-docker-opts.sh)',
  builder: (y) =>
    y
      .option('subnet-file', { alias: 'f', type: 'string', default: DEFAULT_SUBNET_FILE, describe: 'flannel subnet env file to read' })
      .option('docker-env-file', { alias: 'd', type: 'string', default: DEFAULT_DOCKER_ENV_FILE, describe: 'Docker env file to write' })
      .option('combined-key', { alias: 'k', type: 'string', default: DEFAULT_COMBINED_KEY, describe: 'name of the combined variable' })
      .option('individual', { alias: 'i', type: 'boolean', default: false, describe: 'write each option as a DOCKER_OPT_* variable' })
      .option('combined', { alias: 'c', type: 'boolean', default: false, describe: 'write the combined variable (neither -i nor -c: both)' })
      .option('skip-ip-masq', { alias: 'm', type: 'boolean', default: false, describe: 'do not write --ip-masq (older Docker)' }),
  handler: async (argv) => {
    const env = readFlannelEnv(argv['subnet-file']);
    const content = formatDockerOpts(env, {
      combinedKey: argv['combined-key'],
      individual: argv.individual,
      combined: argv.combined,
      ipMasq: !argv['skip-ip-masq'],
      environment: process.env,
    });
    writeFileAtomic(argv['docker-env-file'], content);
    const route = await conflictingRoute(env['FLANNEL_SUBNET']!);
    if (route) throw new Error(`Your routing table already contains the subnet: ${route.dst} via ${formatIp(route.via!)} dev ${route.dev}`);
  },
};
