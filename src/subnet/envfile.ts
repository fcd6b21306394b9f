// The subnet env file that Docker (--bip/--mtu via docker-opts) and the CNI plugin read, in
// upstream's format. Written with write + rename so a reader never sees half a file.
import { mkdirSync, readFileSync, renameSync, writeFileSync, openSync, fsyncSync, closeSync } from 'node:fs';
import { dirname, basename, join } from 'node:path';
import { Ip4Net, formatIp4, parseIp4 } from './ip4.js';

export interface SubnetEnv {
  network: Ip4Net;
  /** This node's subnet. */
  subnet: Ip4Net;
  mtu: number;
  ipMasq: boolean;
}

/** FLANNEL_SUBNET is the subnet's first host address with the subnet's prefix: the bridge's address. */
export function formatSubnetEnv(env: SubnetEnv): string {
  return [
    `FLANNEL_NETWORK=${env.network}`,
    `FLANNEL_SUBNET=${formatIp4(env.subnet.ip + 1)}/${env.subnet.prefixLen}`,
    `FLANNEL_MTU=${env.mtu}`,
    `FLANNEL_IPMASQ=${env.ipMasq}`,
    '',
  ].join('\n');
}

export function writeSubnetEnvFile(path: string, env: SubnetEnv): void {
  writeFileAtomic(path, formatSubnetEnv(env));
}

/** Writes a file (mode 0644, its directory created) through a synced temporary file and a rename. */
export function writeFileAtomic(path: string, content: string): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  writeFileSync(tmp, content, { mode: 0o644 });
  const fd = openSync(tmp, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

/** Parses KEY=VALUE lines (shell-style quotes stripped); comments and blank lines ignored. */
export function parseEnvText(text: string): Record<string, string> {
  const vars: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!m) continue;
    vars[m[1]!] = m[2]!.trim().replace(/^"(.*)"$/, '$1').replace(/^'(.*)'$/, '$1');
  }
  return vars;
}

/** Reads an env file written by us or upstream; throws naming the variable that is missing or wrong. */
export function readSubnetEnvFile(path: string): SubnetEnv {
  const vars = parseEnvText(readFileSync(path, 'utf8'));
  const need = (name: string): string => {
    const v = vars[name];
    if (v === undefined || v === '') throw new Error(`${path}: ${name} is missing`);
    return v;
  };
  const subnetText = need('FLANNEL_SUBNET');
  const [addr, len] = subnetText.split('/');
  let subnet: Ip4Net;
  try {
    subnet = new Ip4Net(parseIp4(addr ?? ''), Number(len));
  } catch {
    throw new Error(`${path}: FLANNEL_SUBNET "${subnetText}" is not an address/prefix`);
  }
  const mtu = Number(need('FLANNEL_MTU'));
  if (!Number.isInteger(mtu) || mtu <= 0) throw new Error(`${path}: FLANNEL_MTU "${vars['FLANNEL_MTU']}" is not a positive integer`);
  return {
    network: Ip4Net.parse(need('FLANNEL_NETWORK'), true),
    subnet,
    mtu,
    ipMasq: (vars['FLANNEL_IPMASQ'] ?? 'false') === 'true',
  };
}

/** The subnet recorded by a previous run, or null when there is no usable file. */
export function previousSubnet(path: string): Ip4Net | null {
  try {
    return readSubnetEnvFile(path).subnet;
  } catch {
    return null;
  }
}
