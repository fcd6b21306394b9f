// flannelctl node cleanup: removes from this node what flanneld and the flannel CNI plugin's
// installation made on it — devices (and with them their routes, neighbours and FDB entries), the pods'
// bridge, host-gw routes, iptables chains and jumps, nftables tables, the subnet env file, the CNI plugin
// and conflist. Each thing is recognised by what only flanneld makes: device names and kinds, chain and
// table names, a bridge addressed inside the flannel network, and for host-gw routes their shape (inside
// the network read from the env file, of the node subnet's length, through a gateway on link). Nothing
// else is touched, so running it twice is safe;
// the second run finds nothing. Kernel changes go through src/routes' checked builders and iptables'
// runner, as argv arrays.
import { existsSync, lstatSync, readFileSync, readdirSync, readlinkSync, rmSync, rmdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { ip, ipJson } from '../routes/ip.js';
import { linkDeleteCommand } from '../routes/link.js';
import { type IpNet, type RouteEntry, RTPROT_KERNEL, describeEntry, hostNet, netFamily, netInside } from '../routes/entries.js';
import { readAddrs } from '../routes/addr.js';
import { readRoutesWithin, routeDeleteCommand } from '../routes/route.js';
import { ruleWriter } from '../netfilter/index.js';
import { parseEnvText } from '../subnet/envfile.js';
import { Ip4Net } from '../common/ip4.js';
import { Ip6Net } from '../common/ip6.js';

/**
 * The devices the backends create: vxlan (IPv4 and IPv6), udp's TUN, wireguard's (kernel or wireguard-go's
 * TUN). A wireguard-go still serving its device (flanneld stops its own, but one may have been left by
 * other means) exits when the device is deleted, and removes its UAPI socket as it goes.
 */
export const FLANNEL_DEVICES: readonly { pattern: RegExp; kinds: readonly string[] }[] = [
  { pattern: /^flannel\.\d+$/, kinds: ['vxlan'] },
  { pattern: /^flannel-v6\.\d+$/, kinds: ['vxlan'] },
  { pattern: /^flannel0$/, kinds: ['tun'] },
  { pattern: /^flannel-wg(-v6)?$/, kinds: ['wireguard', 'tun'] },
];

/** The conflist name the Kubernetes manifest installs. */
export const CONFLIST_NAME = '10-flannel.conflist';

export interface NodeCleanupOptions {
  subnetFile: string;
  /** Where the CNI plugin is linked (/opt/cni/bin); the copied plugin is ../flanneld-ts. */
  cniBinDir: string;
  cniConfDir: string;
  /** The plugin's saved delegate configurations (its dataDir). */
  cniDataDir: string;
}

/** What the cleanup removed, what it left and why, and what failed: one line each. */
export interface NodeCleanupReport {
  removed: string[];
  /** Found but left on purpose, or not looked for (and why). */
  notes: string[];
  /** Could not be removed or checked. */
  problems: string[];
  /** The subnets the env file named (for --release-lease), read before the file is removed. */
  subnet: Ip4Net | null;
}

interface RawLink {
  ifname: string;
  linkinfo?: { info_kind?: string };
}

type Family = 4 | 6;

/** Our devices present on this node, with their kind. */
async function flannelDevices(): Promise<{ name: string; kind: string }[]> {
  const links = await ipJson<RawLink>(['-d', 'link', 'show']);
  const out: { name: string; kind: string }[] = [];
  for (const l of links) {
    const kind = l.linkinfo?.info_kind ?? '';
    if (FLANNEL_DEVICES.some((d) => d.pattern.test(l.ifname) && d.kinds.includes(kind))) out.push({ name: l.ifname, kind });
  }
  return out;
}

/**
 * host-gw's routes (and vxlan's DirectRouting ones): inside the network, of the node subnet's prefix
 * length, through a gateway that is on link on the route's device. Routes of another length, without a
 * gateway (the kernel's own, the CNI bridge's), or through a router are the operator's and stay.
 */
async function peerRoutes(network: IpNet, subnetLen: number): Promise<RouteEntry[]> {
  const family = netFamily(network);
  const onLink = new Map<string, IpNet[]>();
  const prefixesOf = async (dev: string): Promise<IpNet[]> => {
    let nets = onLink.get(dev);
    if (!nets) {
      nets = (await readAddrs(dev, {}, family)).map((a) => (family === 4 ? Ip4Net.parse(a.cidr, true) : Ip6Net.parse(a.cidr, true)));
      onLink.set(dev, nets);
    }
    return nets;
  };
  const out: RouteEntry[] = [];
  for (const r of await readRoutesWithin(network)) {
    if (r.type !== 'unicast' || r.via === null || r.dev === null || r.protocol === RTPROT_KERNEL || r.onlink || r.dst.prefixLen !== subnetLen) continue;
    const via = r.via;
    if ((await prefixesOf(r.dev)).some((net) => netInside(hostNet(via), net))) out.push(r);
  }
  return out;
}

/**
 * Our rules in both front ends, through the writers the daemon uses (src/netfilter): iptables and
 * ip6tables chains with every jump to them, and the nftables tables.
 */
async function cleanNetfilter(report: NodeCleanupReport): Promise<void> {
  for (const mode of ['iptables', 'nftables'] as const) {
    try {
      if (await ruleWriter(mode).remove()) report.removed.push(mode === 'iptables' ? 'iptables and ip6tables chains FLANNEL-POSTRTG and FLANNEL-FWD, with the jumps to them' : 'nftables tables ip flannel-ipv4 and ip6 flannel-ipv6');
    } catch (err) {
      report.problems.push(`${mode}: ${(err as Error).message}`);
    }
  }
}

function removePath(path: string, what: string, report: NodeCleanupReport): void {
  try {
    rmSync(path, { recursive: true, force: true });
    report.removed.push(`${what} ${path}`);
  } catch (err) {
    report.problems.push(`${path}: ${(err as Error).message}`);
  }
}

/** Removes an empty directory; one still in use (a mount point) or not empty stays. */
function rmdirQuietly(dir: string): void {
  try {
    if (readdirSync(dir).length === 0) rmdirSync(dir);
  } catch {
    /* absent, busy (a mount point) or not empty: not ours to insist on */
  }
}

/** A symlink (even a dangling one) or a file, without following it. */
function lexists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** The CNI plugin's link (when it points at a flanneld-ts tree), its copied tree, our conflist, its saved state. */
function cleanCniFiles(opts: NodeCleanupOptions, report: NodeCleanupReport): void {
  const link = join(opts.cniBinDir, 'flannel');
  if (lexists(link) && lstatSync(link).isSymbolicLink() && /(^|\/)flanneld-ts\//.test(readlinkSync(link))) removePath(link, 'CNI plugin link', report);
  const copy = join(dirname(opts.cniBinDir), 'flanneld-ts');
  if (existsSync(copy)) removePath(copy, 'CNI plugin', report);
  const conflist = join(opts.cniConfDir, CONFLIST_NAME);
  if (existsSync(conflist)) {
    let ours = false;
    try {
      const list = JSON.parse(readFileSync(conflist, 'utf8')) as { plugins?: { type?: unknown }[] };
      ours = (list.plugins ?? []).some((p) => p.type === 'flannel');
    } catch {
      ours = false;
    }
    if (ours) removePath(conflist, 'CNI conflist', report);
    else report.notes.push(`${conflist} is not a flannel conflist; left in place`);
  }
  if (existsSync(opts.cniDataDir) && readdirSync(opts.cniDataDir).length > 0) {
    // Its contents: the directory itself may be a mount point (a container's host path).
    for (const entry of readdirSync(opts.cniDataDir)) rmSync(join(opts.cniDataDir, entry), { recursive: true, force: true });
    report.removed.push(`CNI plugin state in ${opts.cniDataDir}`);
  }
  rmdirQuietly(opts.cniDataDir);
}

/**
 * The pods' bridge the CNI plugin's bridge delegate made (cni0, or the conflist's delegate "bridge"):
 * removed when it carries an address of the flannel network, i.e. when it was made for this node's
 * subnet. A bridge of another network is someone else's and stays. Pods still on it lose their network:
 * drain the node first.
 */
async function cleanBridge(opts: NodeCleanupOptions, env: Record<string, string>, report: NodeCleanupReport): Promise<void> {
  let name = 'cni0';
  try {
    const list = JSON.parse(readFileSync(join(opts.cniConfDir, CONFLIST_NAME), 'utf8')) as { plugins?: { type?: unknown; delegate?: { bridge?: unknown } }[] };
    const bridge = list.plugins?.find((p) => p.type === 'flannel')?.delegate?.bridge;
    if (typeof bridge === 'string') name = bridge;
  } catch {
    /* no conflist of ours: the delegate's default name */
  }
  const networks = (env['FLANNEL_NETWORK'] ?? '').split(',').filter((n) => n !== '');
  if (networks.length === 0) return;
  const nets: Ip4Net[] = [];
  for (const n of networks) {
    try {
      nets.push(Ip4Net.parse(n, true));
    } catch {
      /* not a network: it cannot make the bridge ours */
    }
  }
  // No such device: no addresses.
  const ours = (await readAddrs(name, {}, 4)).some((a) => typeof a.ip === 'number' && nets.some((net) => net.contains(a.ip as number)));
  if (ours) await kernel(linkDeleteCommand(name), `bridge ${name} (the pods' bridge on this node's subnet)`, report);
  else report.notes.push(`${name} carries no address of the flannel network; left in place`);
}

/** Runs one `ip` command; what it removed is reported, or why it failed. */
async function kernel(command: string[], what: string, report: NodeCleanupReport): Promise<void> {
  try {
    await ip(command);
    report.removed.push(what);
  } catch (err) {
    report.problems.push(`${what}: ${(err as Error).message}`);
  }
}

/** Removes what flanneld made on this node (run it where flanneld ran: its network namespace). */
export async function cleanupNode(opts: NodeCleanupOptions): Promise<NodeCleanupReport> {
  const report: NodeCleanupReport = { removed: [], notes: [], problems: [], subnet: null };
  let env: Record<string, string> = {};
  if (existsSync(opts.subnetFile)) env = parseEnvText(readFileSync(opts.subnetFile, 'utf8'));
  else report.notes.push(`${opts.subnetFile} does not exist: host-gw routes (only its network names them) were not looked for`);

  await cleanBridge(opts, env, report);
  for (const dev of await flannelDevices()) {
    // Its routes, neighbours and FDB entries go with it.
    await kernel(linkDeleteCommand(dev.name), `device ${dev.name} (${dev.kind}), with its routes, neighbours and FDB entries`, report);
  }

  const families: { family: Family; networks: string[]; subnet: string | undefined }[] = [
    { family: 4, networks: (env['FLANNEL_NETWORK'] ?? '').split(',').filter((n) => n !== ''), subnet: env['FLANNEL_SUBNET'] },
    { family: 6, networks: env['FLANNEL_IPV6_NETWORK'] ? [env['FLANNEL_IPV6_NETWORK']] : [], subnet: env['FLANNEL_IPV6_SUBNET'] },
  ];
  for (const { family, networks, subnet } of families) {
    if (!subnet) continue;
    const subnetLen = Number(subnet.split('/')[1]);
    for (const network of networks) {
      let net: IpNet;
      try {
        net = family === 4 ? Ip4Net.parse(network, true) : Ip6Net.parse(network, true);
      } catch {
        report.problems.push(`${opts.subnetFile}: "${network}" is not a network; its routes were not looked for`);
        continue;
      }
      for (const r of await peerRoutes(net, subnetLen)) {
        await kernel(routeDeleteCommand(r), `route ${describeEntry(r)}`, report);
      }
    }
  }
  if (env['FLANNEL_SUBNET']) {
    try {
      report.subnet = Ip4Net.parse(env['FLANNEL_SUBNET'], true);
    } catch {
      report.problems.push(`${opts.subnetFile}: FLANNEL_SUBNET="${env['FLANNEL_SUBNET']}" is not a subnet`);
    }
  }

  await cleanNetfilter(report);

  if (existsSync(opts.subnetFile)) {
    removePath(opts.subnetFile, 'subnet file', report);
    // The directory flanneld made for it, when nothing else lives there.
    rmdirQuietly(dirname(opts.subnetFile));
  }
  cleanCniFiles(opts, report);
  return report;
}

/** Every address on this node's interfaces, for telling our own lease from another node's. */
export async function localAddresses(): Promise<Set<string>> {
  const addrs = await ipJson<{ addr_info?: { local: string }[] }>(['addr', 'show']);
  return new Set(addrs.flatMap((a) => (a.addr_info ?? []).map((i) => i.local)));
}
