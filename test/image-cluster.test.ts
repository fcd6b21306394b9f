// The container image and deploy/kubernetes/kube-flannel.yml together, run as a kubelet runs them:
// scripts/build-image.sh builds the image; on three nodes of the namespace cluster, podman runs the
// DaemonSet's init containers (the CNI plugin and its conflist into directories standing for each
// node's /opt/cni and /etc/cni/net.d, the network config into etcd) and then flanneld, in the node's
// network namespace, with the manifest's args, environment, mounts and capabilities (test/harness/kube.ts
// translates them). etcd demands client certificates, given as the manifest's Secret. Pods are made
// by the CNI plugin the init container installed; they ping across nodes, and the probes' endpoints
// answer. Then every node switches to the udp backend (its TUN device comes from the /dev/net/tun
// volume, not from a privileged container), after `flannelctl node cleanup` run from the image.
import { existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCluster, repoPath, type Cluster, type ClusterNode } from '../testbed/cluster.js';
import { startTlsEtcd, type TlsEtcd } from './harness/etcd-cluster.js';
import { parseDocument } from 'yaml';
import { configMapData, findObject, loadManifests, podmanRunArgs, podSpecOf, type ContainerSpec, type KubeObject, type NodeContext, type PodSpec } from './harness/kube.js';
import { addNetns, delNetns, run, runId, waitFor } from '../testbed/netns.js';
import { createTestPki, type TestPki } from './harness/tls.js';

// The harness's plain etcd holds 198.18.0.254:2379; the TLS one the manifest points at gets its own.
const TLS_IP = '198.18.0.250';
const NETWORK = '198.19.0.0/16';
// Containers on this machine kind: runc (crun refuses its cgroup layout) and explicit limits.
const PODMAN = ['podman', '--runtime', 'runc'];
const LIMITS = ['--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096'];

const id = runId();
const objects = loadManifests();
const pod = podSpecOf(findObject(objects, 'DaemonSet', 'kube-flannel-ds'));
const flanneldSpec = pod.containers.find((c) => c.name === 'kube-flannel')!;

let image = '';
let cluster: Cluster;
let pki: TestPki;
let etcd: TlsEtcd;
let dir = '';
/** Every container name started, removed by name at the end. */
const containerNames: string[] = [];
const podNamespaces: string[] = [];

interface NodeRun {
  node: ClusterNode;
  ctx: NodeContext & { netns: string; image: string };
  podIp: string | null;
}
const nodes: NodeRun[] = [];

function podman(args: string[], timeoutMs = 60_000) {
  return run([...PODMAN, ...args], { allowFail: true, timeoutMs });
}

/** The pod spec's network config with the test's Network (198.19.0.0/16) and the given backend. */
function netConf(backend: string): string {
  const conf = JSON.parse(configMapData(objects, 'kube-flannel-cfg')['net-conf.json']!) as { Network: string; Backend: { Type: string } };
  return JSON.stringify({ ...conf, Network: NETWORK, Backend: { ...conf.Backend, Type: backend } }, null, 2) + '\n';
}

/** Runs one init container of `spec` to completion; returns its output. */
async function runInit(n: NodeRun, c: ContainerSpec, spec: PodSpec = pod): Promise<string> {
  const name = `flimg-${id}-n${n.node.index}-${c.name}`;
  containerNames.push(name);
  const res = await podman(['run', '--rm', '--name', name, ...LIMITS, ...podmanRunArgs(spec, c, n.ctx)]);
  expect(res.code, `${c.name} on node ${n.node.index}: ${res.stdout}${res.stderr}`).toBe(0);
  return res.stdout;
}

/** The cleanup DaemonSet docs/integration.md shows (its one YAML block under "Removing flanneld from a node"). */
function cleanupPodFromDocs(): PodSpec {
  const doc = readFileSync(repoPath('docs', 'integration.md'), 'utf8');
  const section = doc.slice(doc.indexOf('## Removing flanneld from a node'));
  const block = /```yaml\n([^]*?)```/.exec(section)![1]!;
  const ds = parseDocument(block).toJS() as KubeObject;
  expect(ds.kind).toBe('DaemonSet');
  return podSpecOf(ds);
}

function flanneldName(n: NodeRun): string {
  return `flimg-${id}-n${n.node.index}-${flanneldSpec.name}`;
}

async function startFlanneld(n: NodeRun): Promise<void> {
  const name = flanneldName(n);
  containerNames.push(name);
  const res = await podman(['run', '-d', '--name', name, ...LIMITS, ...podmanRunArgs(pod, flanneldSpec, n.ctx)]);
  expect(res.code, res.stderr).toBe(0);
}

async function stopFlanneld(n: NodeRun): Promise<void> {
  await podman(['stop', '-t', '10', flanneldName(n)]);
  await podman(['rm', '-f', '--ignore', flanneldName(n)]);
}

async function logsOf(n: NodeRun): Promise<string> {
  const res = await podman(['logs', '--tail', '30', flanneldName(n)]);
  return `node ${n.node.index}:\n${res.stdout}${res.stderr}`;
}

/** GET of a probe as the kubelet makes it from the node (hostNetwork): the HTTP status, or 0. */
async function probe(n: NodeRun, p: { path: string; port: number; host?: string }): Promise<number> {
  const url = `http://${p.host ?? n.node.ip}:${p.port}${p.path}`;
  const res = await run(['curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '2', url], { netns: n.node.ns, allowFail: true });
  return Number(res.stdout.trim()) || 0;
}

/** A pod made the way the runtime makes one: the installed plugin, ADD, with the conflist's flannel entry. */
async function addPod(n: NodeRun, round: number): Promise<string> {
  const podNs = `flimg-${id}-p${n.node.index}-${round}`;
  podNamespaces.push(podNs);
  await addNetns(podNs);
  const root = n.ctx.hostRoot;
  const list = JSON.parse(readFileSync(join(root, 'etc/cni/net.d/10-flannel.conflist'), 'utf8')) as { name: string; cniVersion: string; plugins: Record<string, unknown>[] };
  const entry = list.plugins.find((p) => p['type'] === 'flannel')!;
  // The node's host paths live under its directory: the env file flanneld wrote, the plugin's state.
  const conf = {
    ...entry, name: list.name, cniVersion: list.cniVersion,
    subnetFile: join(root, 'run/flannel/subnet.env'),
    dataDir: join(root, 'var/lib/cni/flannel'),
    ipam: { dataDir: join(root, 'var/lib/cni/networks') },
  };
  // /opt/cni/bin/flannel points at the client under /opt/cni/flanneld-ts on the host: here, under the node's directory.
  const link = readlinkSync(join(root, 'opt/cni/bin/flannel'));
  expect(link.startsWith('/opt/cni/')).toBe(true);
  const plugin = join(root, link);
  const res = await run([plugin], {
    netns: n.node.ns, input: JSON.stringify(conf), allowFail: true,
    env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: `flimg-${id}-${n.node.index}-${round}`, CNI_NETNS: `/var/run/netns/${podNs}`, CNI_IFNAME: 'eth0', CNI_PATH: '/usr/lib/cni' },
  });
  expect(res.code, `${res.stdout}${res.stderr}`).toBe(0);
  const result = JSON.parse(res.stdout) as { ips: { address: string }[] };
  return result.ips[0]!.address.split('/')[0]!;
}

async function unreachablePairs(): Promise<string[]> {
  const failed: string[] = [];
  for (const from of nodes) {
    for (const to of nodes) {
      if (from === to) continue;
      const fromNs = podNamespaces.filter((ns) => ns.startsWith(`flimg-${id}-p${from.node.index}-`)).at(-1)!;
      const ok = await waitFor(async () => (await run(['ping', '-n', '-q', '-c', '1', '-W', '1', to.podIp!], { netns: fromNs, allowFail: true })).code === 0, 20_000, 0);
      if (!ok) failed.push(`node ${from.node.index} -> ${to.podIp}`);
    }
  }
  return failed;
}

beforeAll(async () => {
  const build = await run(['bash', repoPath('scripts', 'build-image.sh')], { timeoutMs: 600_000, allowFail: true });
  expect(build.code, build.stderr.slice(-3000)).toBe(0);
  image = build.stdout.trim().split('\n').at(-1)!;
  dir = mkdtempSync(join(tmpdir(), `flimg-${id}-`));
  pki = await createTestPki([TLS_IP]);
  cluster = await createCluster({ nodes: 3, config: { Network: NETWORK, Backend: { Type: 'vxlan' } }, startDaemons: false });
  await run(['ip', '-n', cluster.hubNs, 'addr', 'add', `${TLS_IP}/24`, 'dev', 'br0']);
  etcd = await startTlsEtcd(cluster.hubNs, TLS_IP, { ca: pki.ca.cert, serverCert: pki.server.cert, serverKey: pki.server.key },
    { ca: pki.ca.cert, cert: pki.client.cert, key: pki.client.key });

  // The Secret holds the files the etcd ConfigMap names, in the directory the manifest mounts it at.
  const etcdCm = configMapData(objects, 'kube-flannel-etcd');
  const tlsMount = flanneldSpec.volumeMounts!.find((m) => m.name === 'etcd-tls')!.mountPath.replace(/\/$/, '');
  const secretFiles: Record<string, string> = {};
  for (const [key, file] of [['FLANNELD_ETCD_CAFILE', pki.ca.cert], ['FLANNELD_ETCD_CERTFILE', pki.client.cert], ['FLANNELD_ETCD_KEYFILE', pki.client.key]] as const) {
    const path = etcdCm[key]!;
    expect(path.startsWith(`${tlsMount}/`), `${key}=${path}`).toBe(true);
    secretFiles[path.slice(tlsMount.length + 1)] = readFileSync(file, 'utf8');
  }
  const secretName = (pod.volumes.find((v) => v.name === 'etcd-tls')!.secret!).secretName;
  for (const node of cluster.nodes) {
    // A node has a default route; flanneld takes its interface as the underlay (the manifest gives no --iface).
    await run(['ip', '-n', node.ns, 'route', 'add', 'default', 'via', '198.18.0.254', 'dev', 'eth0']);
    nodes.push({
      node, podIp: null,
      ctx: {
        netns: node.ns, image,
        hostRoot: join(dir, `node${node.index}`, 'host'),
        volumeDir: join(dir, `node${node.index}`, 'volumes'),
        sharedHostPaths: ['/dev/net/tun'],
        configMaps: {
          'kube-flannel-cfg': { ...configMapData(objects, 'kube-flannel-cfg'), 'net-conf.json': netConf('vxlan') },
          'kube-flannel-etcd': { ...etcdCm, FLANNELD_ETCD_ENDPOINTS: etcd.endpoint },
        },
        secrets: { [secretName]: secretFiles },
      },
    });
  }
}, 660_000);

afterAll(async () => {
  for (const name of containerNames) await podman(['rm', '-f', '-t', '0', '--ignore', name]);
  for (const ns of podNamespaces) await delNetns(ns);
  await etcd?.stop();
  await cluster?.destroy();
  pki?.remove();
  if (dir) rmSync(dir, { recursive: true, force: true });
}, 120_000);

describe('the image on three nodes, as kube-flannel.yml runs it', () => {
  it('every container of the DaemonSet uses the image build-image.sh made', () => {
    for (const c of [...pod.initContainers, ...pod.containers]) expect(`localhost/${c.image}`).toBe(`localhost/${image}`);
    // The image's entrypoint is flanneld: its arguments are the daemon's flags.
    expect(flanneldSpec.command).toEqual(['/usr/local/bin/flanneld']);
  });

  it('init containers install the CNI plugin and conflist and put the network config into etcd over TLS; flanneld starts; probes answer', async () => {
    expect(await etcd.etcdctl(['get', '/coreos.com/network/config', '--print-value-only'])).toBe('');
    for (const n of nodes) for (const c of pod.initContainers) await runInit(n, c);
    expect((await etcd.etcdctl(['get', '/coreos.com/network/config', '--print-value-only'])).trim()).toBe(netConf('vxlan').trim());
    for (const n of nodes) {
      const root = n.ctx.hostRoot;
      // The plugin is the compiled client (flanneld serves the calls it can; the client runs the standalone
      // plugin beside it otherwise), linked, as install-cni-plugin.sh installs it.
      expect(readlinkSync(join(root, 'opt/cni/bin/flannel'))).toBe('/opt/cni/flanneld-ts/build/Release/flannel_cni');
      expect(existsSync(join(root, 'opt/cni/flanneld-ts/bin/flannel'))).toBe(true);
      expect(existsSync(join(root, 'opt/cni/flanneld-ts/node'))).toBe(true);
      expect(readFileSync(join(root, 'etc/cni/net.d/10-flannel.conflist'), 'utf8')).toBe(configMapData(objects, 'kube-flannel-cfg')['cni-conf.json']);
    }
    await Promise.all(nodes.map((n) => startFlanneld(n)));
    for (const n of nodes) {
      const ready = await waitFor(async () => (await probe(n, flanneldSpec.readinessProbe!.httpGet)) === 200, 60_000, 250);
      expect(ready, await logsOf(n)).toBe(true);
      expect(await probe(n, flanneldSpec.livenessProbe!.httpGet)).toBe(200);
      expect(readFileSync(join(n.ctx.hostRoot, 'run/flannel/subnet.env'), 'utf8')).toMatch(/^FLANNEL_NETWORK=198\.19\.0\.0\/16$/m);
    }
    const leases = (await etcd.etcdctl(['get', '--prefix', '/coreos.com/network/subnets/', '--keys-only'])).split('\n').filter((l) => l.trim() !== '');
    expect(leases).toHaveLength(3);
  }, 180_000);

  it('pods made by the installed CNI plugin ping each other across nodes (vxlan), and --ip-masq rules are in place', async () => {
    for (const n of nodes) n.podIp = await addPod(n, 1);
    expect(await unreachablePairs(), (await Promise.all(nodes.map(logsOf))).join('\n')).toEqual([]);
    for (const n of nodes) {
      const saved = await run(['iptables-save', '-t', 'nat'], { netns: n.node.ns });
      expect(saved.stdout).toContain('-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG');
    }
  }, 120_000);

  it('the cleanup DaemonSet of the docs removes every node\'s state and lease; then the nodes run udp, TUN from the /dev/net/tun volume', async () => {
    for (const n of nodes) await stopFlanneld(n);
    const cleanup = cleanupPodFromDocs();
    for (const n of nodes) {
      const out = await runInit(n, cleanup.initContainers[0]!, cleanup);
      expect(out).toContain('removed device flannel.1 (vxlan)');
      expect(out).toMatch(/^lease 198\.19\.\d+\.0\/24 \(public IP 198\.18\.0\.\d+\) deleted from etcd$/m);
      expect(await run(['ip', '-d', 'link', 'show'], { netns: n.node.ns }).then((r) => r.stdout)).not.toMatch(/flannel|cni0/);
      expect(await run(['iptables-save'], { netns: n.node.ns }).then((r) => r.stdout)).not.toMatch(/flannel/i);
      const root = n.ctx.hostRoot;
      for (const gone of ['run/flannel/subnet.env', 'opt/cni/bin/flannel', 'opt/cni/flanneld-ts', 'etc/cni/net.d/10-flannel.conflist']) {
        expect(existsSync(join(root, gone)), gone).toBe(false);
      }
      // The plugin's state directory is the container's mount point: emptied.
      expect(readdirSync(join(root, 'var/lib/cni/flannel'))).toEqual([]);
    }
    expect(await etcd.etcdctl(['get', '--prefix', '/coreos.com/network/subnets/', '--keys-only'])).toBe('');

    for (const n of nodes) n.ctx.configMaps['kube-flannel-cfg']!['net-conf.json'] = netConf('udp');
    for (const n of nodes) for (const c of pod.initContainers) await runInit(n, c);
    expect((await etcd.etcdctl(['get', '/coreos.com/network/config', '--print-value-only'])).trim()).toBe(netConf('udp').trim());
    await Promise.all(nodes.map((n) => startFlanneld(n)));
    for (const n of nodes) {
      const ready = await waitFor(async () => (await probe(n, flanneldSpec.readinessProbe!.httpGet)) === 200, 60_000, 250);
      expect(ready, await logsOf(n)).toBe(true);
      const tun = await run(['ip', '-d', 'link', 'show', 'flannel0'], { netns: n.node.ns, allowFail: true });
      expect(tun.stdout).toContain('tun');
    }
    for (const n of nodes) n.podIp = await addPod(n, 2);
    expect(await unreachablePairs(), (await Promise.all(nodes.map(logsOf))).join('\n')).toEqual([]);
  }, 180_000);
});
