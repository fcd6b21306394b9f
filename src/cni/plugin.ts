// The flannel CNI plugin: a meta-plugin. ADD reads flanneld's subnet env file, builds a delegate conf
// (bridge + host-local over this node's subnet by default), saves it under dataDir/<containerID>, and
// runs the delegate; DEL and CHECK run the delegate again with the saved conf, so they keep working
// after the subnet env file has changed or gone.
import { mkdirSync, readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../common/atomic-file.js';
import { CNI_ERR, CniError } from './errors.js';
import { buildDelegateConf, findPlugin, invokeDelegate, type CniCommand } from './delegate.js';
import { isObject, parseFlannelNetConf, type FlannelNetConf, type JsonObject } from './netconf.js';
import { readFlannelSubnetEnv } from './subnet-env.js';

export const SUPPORTED_VERSIONS = ['0.1.0', '0.2.0', '0.3.0', '0.3.1', '0.4.0', '1.0.0'] as const;
export const LATEST_VERSION = '1.0.0';

export interface PluginOutput {
  stdout: string;
  stderr: string;
  exitCode: number;
}

type Env = Record<string, string | undefined>;

const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

function requireEnv(env: Env, names: string[]): void {
  const missing = names.filter((n) => !env[n]);
  if (missing.length > 0) {
    throw new CniError(CNI_ERR.invalidEnvironment, `required env variables [${missing.join(',')}] missing`);
  }
  const id = env['CNI_CONTAINERID'];
  if (id !== undefined && !CONTAINER_ID.test(id)) {
    throw new CniError(CNI_ERR.invalidEnvironment, `invalid CNI_CONTAINERID "${id}": use letters, digits, "_", "." and "-", starting with a letter or digit`);
  }
}

function checkVersion(conf: FlannelNetConf): void {
  if (conf.cniVersion && !(SUPPORTED_VERSIONS as readonly string[]).includes(conf.cniVersion)) {
    throw new CniError(
      CNI_ERR.incompatibleVersion,
      `incompatible CNI versions: config is "${conf.cniVersion}", plugin supports [${SUPPORTED_VERSIONS.join(' ')}]`,
    );
  }
}

// --- the saved delegate confs ("scratch" confs upstream) ---

function scratchPath(dataDir: string, containerId: string): string {
  return join(dataDir, containerId);
}

function saveScratch(dataDir: string, containerId: string, conf: string): void {
  try {
    // 0700 as upstream's plugin makes it: the confs are root's business. Not synced, as neither
    // upstream's plugin nor host-local (whose address files the conf goes with) sync theirs: under
    // disk load the sync lengthened every pod's ADD (docs/benchmarks.md) for a file that a crash
    // would leave no more incomplete than host-local's.
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    writeFileAtomic(scratchPath(dataDir, containerId), conf, 0o600, { sync: false });
  } catch (err) {
    throw new CniError(CNI_ERR.ioFailure, `cannot save the delegate config in ${dataDir}: ${(err as Error).message}`);
  }
}

/** The saved conf, or null when there is none. */
function loadScratch(dataDir: string, containerId: string): string | null {
  try {
    return readFileSync(scratchPath(dataDir, containerId), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new CniError(CNI_ERR.ioFailure, `cannot read the saved delegate config: ${(err as Error).message}`);
  }
}

async function removeScratch(dataDir: string, containerId: string): Promise<void> {
  await rm(scratchPath(dataDir, containerId), { force: true });
}

// --- commands ---

async function cmdAdd(conf: FlannelNetConf, env: Env): Promise<string> {
  const subnetEnv = readFlannelSubnetEnv(conf.subnetFile);
  const delegate = buildDelegateConf(conf, subnetEnv);
  const plugin = findPlugin(delegate['type'] as string, env['CNI_PATH']!);
  const text = JSON.stringify(delegate);
  // Saved before the delegate runs, so that the runtime's DEL after a failed ADD can clean up.
  saveScratch(conf.dataDir, env['CNI_CONTAINERID']!, text);
  const { stdout } = await invokeDelegate(plugin, 'ADD', text, env);
  try {
    JSON.parse(stdout);
  } catch {
    throw new CniError(CNI_ERR.decodingFailure, `delegate ${plugin} returned a result that is not JSON: ${stdout.slice(0, 200)}`);
  }
  return stdout.endsWith('\n') ? stdout : stdout + '\n';
}

async function cmdDel(conf: FlannelNetConf, env: Env, warn: (m: string) => void): Promise<void> {
  const containerId = env['CNI_CONTAINERID']!;
  const saved = loadScratch(conf.dataDir, containerId);
  // Per the spec, DEL of something already gone succeeds.
  if (saved === null) return;
  let parsed: unknown;
  try {
    parsed = JSON.parse(saved);
  } catch {
    parsed = null;
  }
  if (!isObject(parsed) || typeof parsed['type'] !== 'string') {
    warn(`flannel: saved delegate config for ${containerId} is unreadable; removing it (the interface stays until the netns goes)`);
    await removeScratch(conf.dataDir, containerId);
    return;
  }
  await invokeDelegate(findPlugin(parsed['type'], env['CNI_PATH']!), 'DEL', saved, env);
  await removeScratch(conf.dataDir, containerId);
}

async function cmdCheck(conf: FlannelNetConf, env: Env): Promise<void> {
  if (compareVersions(conf.cniVersion || '0.1.0', '0.4.0') < 0) {
    throw new CniError(CNI_ERR.incompatibleVersion, `config version "${conf.cniVersion || '0.1.0'}" does not allow CHECK`);
  }
  const containerId = env['CNI_CONTAINERID']!;
  const saved = loadScratch(conf.dataDir, containerId);
  if (saved === null) {
    throw new CniError(CNI_ERR.unknownContainer, `no delegate config saved for container ${containerId} in ${conf.dataDir}: it was not added by this plugin`);
  }
  let delegate: JsonObject;
  try {
    const parsed: unknown = JSON.parse(saved);
    if (!isObject(parsed) || typeof parsed['type'] !== 'string') throw new Error('no "type"');
    delegate = parsed;
  } catch (err) {
    throw new CniError(CNI_ERR.decodingFailure, `saved delegate config for ${containerId} is unreadable: ${(err as Error).message}`);
  }
  // A pod addressed from a subnet this node no longer holds cannot be reached: report it, so the
  // runtime recreates the pod. When flanneld is (re)starting the file may be absent; that is no error.
  let current: string | null = null;
  try {
    current = readFlannelSubnetEnv(conf.subnetFile).subnet.toString();
  } catch {
    current = null;
  }
  const ranges = isObject(delegate['ipam']) ? delegate['ipam']['ranges'] : undefined;
  const savedSubnet = Array.isArray(ranges) && Array.isArray(ranges[0]) && isObject(ranges[0][0]) ? ranges[0][0]['subnet'] : undefined;
  if (current !== null && typeof savedSubnet === 'string' && savedSubnet !== current) {
    throw new CniError(100, `container ${containerId} has an address from ${savedSubnet}, but this node's flannel subnet is now ${current}`);
  }
  delegate['cniVersion'] = conf.cniVersion;
  if (conf.raw['prevResult'] !== undefined) delegate['prevResult'] = conf.raw['prevResult'];
  if (conf.runtimeConfig) delegate['runtimeConfig'] = conf.runtimeConfig;
  await invokeDelegate(findPlugin(delegate['type'] as string, env['CNI_PATH']!), 'CHECK', JSON.stringify(delegate), env);
}

function versionOutput(stdin: string): string {
  let requested = '';
  try {
    const parsed: unknown = JSON.parse(stdin);
    if (isObject(parsed) && typeof parsed['cniVersion'] === 'string') requested = parsed['cniVersion'];
  } catch {
    /* VERSION may come with an empty stdin */
  }
  const cniVersion = (SUPPORTED_VERSIONS as readonly string[]).includes(requested) ? requested : LATEST_VERSION;
  return JSON.stringify({ cniVersion, supportedVersions: SUPPORTED_VERSIONS }) + '\n';
}

/** Runs one plugin invocation. Never throws: failures become a CNI error result and a non-zero exit. */
export async function runPlugin(env: Env, stdin: string): Promise<PluginOutput> {
  let stderr = '';
  const warn = (m: string): void => {
    stderr += m + '\n';
  };
  let errorVersion = LATEST_VERSION;
  try {
    const command = env['CNI_COMMAND'];
    if (!command) throw new CniError(CNI_ERR.invalidEnvironment, 'required env variables [CNI_COMMAND] missing');
    if (command === 'VERSION') return { stdout: versionOutput(stdin), stderr, exitCode: 0 };
    if (command !== 'ADD' && command !== 'DEL' && command !== 'CHECK') {
      throw new CniError(CNI_ERR.invalidEnvironment, `unknown CNI_COMMAND: ${command}`);
    }
    const cmd: CniCommand = command;
    requireEnv(env, cmd === 'DEL' ? ['CNI_CONTAINERID', 'CNI_IFNAME', 'CNI_PATH'] : ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH']);
    const conf = parseFlannelNetConf(stdin);
    checkVersion(conf);
    if (conf.cniVersion) errorVersion = conf.cniVersion;
    if (cmd === 'ADD') return { stdout: await cmdAdd(conf, env), stderr, exitCode: 0 };
    if (cmd === 'DEL') await cmdDel(conf, env, warn);
    else await cmdCheck(conf, env);
    return { stdout: '', stderr, exitCode: 0 };
  } catch (err) {
    const e = err instanceof CniError ? err : new CniError(CNI_ERR.internal, (err as Error).message ?? String(err));
    return { stdout: JSON.stringify(e.toJSON(errorVersion)) + '\n', stderr, exitCode: 1 };
  }
}
