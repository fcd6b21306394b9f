// Building the delegate's configuration from the flannel conf and the subnet env file (the same
// rules as upstream's flannel CNI plugin), and running the delegate the way a runtime runs a plugin.
import { spawn } from 'node:child_process';
import { accessSync, constants, statSync } from 'node:fs';
import { join } from 'node:path';
import { CNI_ERR, CniError } from './errors.js';
import { isObject, type FlannelNetConf, type JsonObject } from './netconf.js';
import { formatIp4 } from '../common/ip4.js';
import { formatIp6 } from '../common/ip6.js';
import type { SubnetEnv } from '../subnet/envfile.js';

/**
 * The delegate conf: `delegate` from the flannel conf, completed with defaults: type bridge (with
 * isGateway), ipMasq when flanneld does not masquerade itself, flanneld's MTU, and host-local IPAM
 * over this node's subnet with a route to the whole flannel network.
 */
export function buildDelegateConf(conf: FlannelNetConf, env: SubnetEnv): JsonObject {
  const d: JsonObject = { ...(conf.delegate ?? {}) };
  if (conf.runtimeConfig) d['runtimeConfig'] = conf.runtimeConfig;
  d['name'] = conf.name;
  if (!('type' in d)) d['type'] = 'bridge';
  // If flanneld masquerades (--ip-masq), the bridge must not do it a second time.
  if (!('ipMasq' in d)) d['ipMasq'] = !env.ipMasq;
  if (!('mtu' in d)) d['mtu'] = env.mtu;
  if (d['type'] === 'bridge' && !('isGateway' in d)) d['isGateway'] = true;
  if (conf.cniVersion) d['cniVersion'] = conf.cniVersion;

  const ipam: JsonObject = { ...(conf.ipam ?? {}) };
  if (!('type' in ipam)) ipam['type'] = 'host-local';
  // Dual stack: a second range set, so host-local hands each pod one address of each family.
  ipam['ranges'] = [[{ subnet: env.subnet.toString() }], ...(env.ipv6Subnet ? [[{ subnet: env.ipv6Subnet.toString() }]] : [])];
  const routes = Array.isArray(ipam['routes']) ? [...(ipam['routes'] as unknown[])] : [];
  // Upstream writes {dst} alone, and plugins route it via the IPAM gateway, which for host-local over
  // our range is the subnet's first address. Naming that gateway gives the same kernel route, and lets
  // CHECK pass with containernetworking-plugins before v1.3.0, whose route check cannot match a route
  // without a gateway against the kernel's (containernetworking/plugins#887).
  const gw = ipam['type'] === 'host-local' ? { gw: formatIp4(env.subnet.ip + 1) } : {};
  for (const n of env.networks) routes.push({ dst: n.toString(), ...gw });
  if (env.ipv6Network && env.ipv6Subnet) {
    const gw6 = ipam['type'] === 'host-local' ? { gw: formatIp6(env.ipv6Subnet.ip + 1n) } : {};
    routes.push({ dst: env.ipv6Network.toString(), ...gw6 });
  }
  ipam['routes'] = routes;
  d['ipam'] = ipam;
  return d;
}

const PLUGIN_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** The first executable `type` in the CNI_PATH directories. */
export function findPlugin(type: string, cniPath: string): string {
  if (!PLUGIN_NAME.test(type)) throw new CniError(CNI_ERR.invalidNetworkConfig, `invalid delegate plugin type "${type}"`);
  const dirs = cniPath.split(':').filter((d) => d !== '');
  for (const dir of dirs) {
    const candidate = join(dir, type);
    try {
      if (!statSync(candidate).isFile()) continue;
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      /* not here */
    }
  }
  throw new CniError(CNI_ERR.invalidNetworkConfig, `failed to find plugin "${type}" in path [${dirs.join(' ')}]`);
}

/** Where bin/flannel also looks for programs: runtimes may run plugins with a minimal PATH. */
const STANDARD_PATH = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

/**
 * The environment the plugin runs with when it serves a caller's request (flanneld's socket): the
 * caller's CNI_* variables, which are the protocol, and its PATH, where delegates find the programs
 * they run (bridge runs iptables), with the standard directories appended as bin/flannel appends
 * them. Nothing else of either process: not the caller's other variables (a runtime's proxies or
 * locale are no part of the protocol), and not the daemon's (its etcd credentials).
 */
export function delegateEnvironment(callerEnv: Readonly<Record<string, string>>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [name, value] of Object.entries(callerEnv)) if (name.startsWith('CNI_')) env[name] = value;
  const path = (callerEnv['PATH'] ?? '').split(':').filter((d) => d !== '');
  env['PATH'] = [...path, ...STANDARD_PATH.filter((d) => !path.includes(d))].join(':');
  return env;
}

export type CniCommand = 'ADD' | 'DEL' | 'CHECK';

export interface DelegateOutcome {
  /** The delegate's stdout (its result JSON for ADD; usually empty for DEL and CHECK). */
  stdout: string;
}

/** Runs a plugin with the runtime's CNI_* environment (CNI_COMMAND set to `command`) and `conf` on stdin. */
export function invokeDelegate(
  pluginPath: string,
  command: CniCommand,
  conf: string,
  env: Record<string, string | undefined>,
  timeoutMs = 300_000,
): Promise<DelegateOutcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(pluginPath, [], { env: { ...env, CNI_COMMAND: command }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new CniError(CNI_ERR.internal, `failed to run delegate ${pluginPath}: ${err.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) {
        resolve({ stdout });
        return;
      }
      reject(delegateError(pluginPath, command, stdout, stderr, code, signal));
    });
    child.stdin.on('error', () => {}); // a delegate that exits without reading is reported by 'close'
    child.stdin.end(conf);
  });
}

/** The delegate's own CNI error (code and details kept), its message prefixed as upstream does. */
function delegateError(
  pluginPath: string,
  command: CniCommand,
  stdout: string,
  stderr: string,
  code: number | null,
  signal: NodeJS.Signals | null,
): CniError {
  const verb = command === 'ADD' ? 'add' : command === 'DEL' ? 'del' : 'check';
  try {
    const parsed: unknown = JSON.parse(stdout);
    if (isObject(parsed) && typeof parsed['code'] === 'number' && typeof parsed['msg'] === 'string') {
      const details = typeof parsed['details'] === 'string' ? parsed['details'] : '';
      return new CniError(parsed['code'], `failed to delegate ${verb}: ${parsed['msg']}`, details);
    }
  } catch {
    /* not a CNI error result */
  }
  const how = signal ? `was killed by ${signal}` : `exited ${code}`;
  const output = (stderr || stdout).trim().slice(-1000);
  return new CniError(CNI_ERR.internal, `failed to delegate ${verb}: ${pluginPath} ${how}${output ? `: ${output}` : ''}`);
}
