// The deployment files: Kubernetes manifests parsed, validated against the Kubernetes API schemas and
// checked against the code they configure (the network config parser, the CNI plugin's conf parser, the
// daemon's flags and health endpoints), the systemd units through systemd-analyze, and install.sh run
// into a DESTDIR.
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DaemonSet } from 'kubernetes-models/apps/v1/DaemonSet';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Namespace } from 'kubernetes-models/v1/Namespace';
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildDelegateConf } from '../src/cni/delegate.js';
import { parseFlannelNetConf } from '../src/cni/netconf.js';
import { SUPPORTED_VERSIONS } from '../src/cni/plugin.js';
import { Ip4Net } from '../src/common/ip4.js';
import { parseNetworkConfig } from '../src/subnet/config.js';
import { createCluster, killPid, repoPath, type Cluster } from '../testbed/cluster.js';
import { containerEnv, loadManifests } from './harness/kube.js';
import { startEtcd } from '../testbed/etcd.js';
import { addLoneNodeNetns, delNetns, run, runId, waitFor } from '../testbed/netns.js';

type Obj = Record<string, unknown>;

interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: { name: string; value?: string; valueFrom?: { configMapKeyRef?: { name: string; key: string } } }[];
  envFrom?: { configMapRef?: { name: string } }[];
  securityContext?: { privileged?: boolean; allowPrivilegeEscalation?: boolean; capabilities?: { add?: string[]; drop?: string[] } };
  livenessProbe?: { httpGet: { path: string; port: number; host?: string } };
  readinessProbe?: { httpGet: { path: string; port: number; host?: string } };
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
}

const built = existsSync(repoPath('dist', 'daemon', 'main.js')) && existsSync(repoPath('dist', 'cni', 'main.js'));

// install.sh copies node_modules and prunes it (seconds): done once, shared by the tests that need a tree.
let installRoot: string | null = null;
function installedTree(): string {
  if (installRoot) return installRoot;
  const dest = mkdtempSync(join(tmpdir(), 'deploy-tree-'));
  const res = spawnSync(repoPath('deploy', 'install.sh'), ['--docker', '--cni'], { env: { ...process.env, DESTDIR: dest }, encoding: 'utf8' });
  if (res.status !== 0) throw new Error(`install.sh failed: ${res.stderr}`);
  installRoot = dest;
  return dest;
}
afterAll(() => {
  if (installRoot) rmSync(installRoot, { recursive: true, force: true });
});

function manifests(): Obj[] {
  return loadManifests() as Obj[];
}

function byKind(kind: string, name?: string): Obj {
  const found = manifests().filter((m) => m['kind'] === kind && (name === undefined || (m['metadata'] as Obj)['name'] === name));
  expect(found, kind).toHaveLength(1);
  return found[0]!;
}

function daemonSetParts(): { spec: Obj; containers: Container[]; initContainers: Container[]; volumes: Obj[] } {
  const ds = byKind('DaemonSet');
  const spec = ((ds['spec'] as Obj)['template'] as Obj)['spec'] as Obj;
  return {
    spec,
    containers: spec['containers'] as Container[],
    initContainers: spec['initContainers'] as Container[],
    volumes: spec['volumes'] as Obj[],
  };
}

/** The flannel ConfigMap (network config, conflist); `name` for another. */
function configMapData(name = 'kube-flannel-cfg'): Record<string, string> {
  return byKind('ConfigMap', name)['data'] as Record<string, string>;
}

describe('Kubernetes manifests', () => {
  it('parse, and every object has apiVersion, kind and metadata, in the kube-flannel namespace', () => {
    const docs = manifests();
    // Two ConfigMaps: the flannel settings, and how to reach etcd (taken whole by every etcd client).
    expect(docs.map((d) => d['kind']).sort()).toEqual(['ConfigMap', 'ConfigMap', 'DaemonSet', 'Namespace', 'ServiceAccount']);
    const expectedApi: Record<string, string> = { Namespace: 'v1', ServiceAccount: 'v1', ConfigMap: 'v1', DaemonSet: 'apps/v1' };
    for (const d of docs) {
      const kind = d['kind'] as string;
      expect(d['apiVersion'], kind).toBe(expectedApi[kind]);
      const meta = d['metadata'] as Obj;
      expect(typeof meta['name']).toBe('string');
      if (kind !== 'Namespace') expect(meta['namespace'], kind).toBe('kube-flannel');
    }
    const ds = byKind('DaemonSet');
    const selector = ((ds['spec'] as Obj)['selector'] as Obj)['matchLabels'] as Record<string, string>;
    const labels = (((ds['spec'] as Obj)['template'] as Obj)['metadata'] as Obj)['labels'] as Record<string, string>;
    for (const [k, v] of Object.entries(selector)) expect(labels[k]).toBe(v);
  });

  it('runs flanneld on the host network with NET_ADMIN and NET_RAW, tolerating every taint', () => {
    const { spec, containers } = daemonSetParts();
    expect(spec['hostNetwork']).toBe(true);
    expect(spec['serviceAccountName']).toBe(byKind('ServiceAccount')['metadata'] && (byKind('ServiceAccount')['metadata'] as Obj)['name']);
    const flanneld = containers.find((c) => c.command?.[0] === '/usr/local/bin/flanneld');
    expect(flanneld).toBeDefined();
    expect(flanneld!.securityContext?.capabilities?.add).toEqual(expect.arrayContaining(['NET_ADMIN', 'NET_RAW']));
    const tolerations = spec['tolerations'] as { operator: string; effect?: string }[];
    expect(tolerations).toEqual(expect.arrayContaining([{ operator: 'Exists', effect: 'NoSchedule' }]));
    // The subnet file the CNI plugin reads on the host is where flanneld writes it.
    const runMount = flanneld!.volumeMounts!.find((m) => m.mountPath === '/run/flannel');
    expect(runMount).toBeDefined();
    expect(flanneld!.args).toContain('--subnet-file=/run/flannel/subnet.env');
    // Environment values come from ConfigMaps that exist (the etcd settings: their own ConfigMap, whole).
    const configMaps = { 'kube-flannel-cfg': configMapData(), 'kube-flannel-etcd': configMapData('kube-flannel-etcd') };
    const env = containerEnv(flanneld! as Parameters<typeof containerEnv>[0], { configMaps, secrets: {} });
    expect(Object.keys(env)).toContain('FLANNELD_ETCD_ENDPOINTS');
    // Every volume mounted is declared.
    const declared = daemonSetParts().volumes.map((v) => v['name']);
    for (const c of [...containers, ...daemonSetParts().initContainers]) {
      for (const m of c.volumeMounts ?? []) expect(declared, `${c.name}: ${m.name}`).toContain(m.name);
    }
  });

  it('validates against the Kubernetes API schemas (kubernetes-models), which refuse a broken copy', () => {
    const models: Record<string, { validate(): void }> = {};
    const model = (d: Obj): { validate(): void } => {
      const key = `${String(d['apiVersion'])}/${String(d['kind'])}`;
      switch (key) {
        case 'v1/Namespace': return new Namespace(d as ConstructorParameters<typeof Namespace>[0]);
        case 'v1/ServiceAccount': return new ServiceAccount(d as ConstructorParameters<typeof ServiceAccount>[0]);
        case 'v1/ConfigMap': return new ConfigMap(d as ConstructorParameters<typeof ConfigMap>[0]);
        case 'apps/v1/DaemonSet': return new DaemonSet(d as ConstructorParameters<typeof DaemonSet>[0]);
        default: throw new Error(`no schema here for ${key}`);
      }
    };
    for (const d of manifests()) {
      const name = `${String(d['kind'])} ${String((d['metadata'] as Obj)['name'])}`;
      models[name] = model(d);
      expect(() => models[name]!.validate(), name).not.toThrow();
    }
    // The validator is live: a probe port that is neither a number nor a name, a DaemonSet without a selector.
    const broken = structuredClone(byKind('DaemonSet'));
    const spec = ((broken['spec'] as Obj)['template'] as Obj)['spec'] as { containers: Container[] };
    (spec.containers[0]!.livenessProbe!.httpGet as { port: unknown }).port = { number: 10269 };
    expect(() => model(broken).validate()).toThrow(/livenessProbe\/httpGet\/port/);
    const noSelector = structuredClone(byKind('DaemonSet'));
    delete (noSelector['spec'] as Obj)['selector'];
    expect(() => model(noSelector).validate()).toThrow(/selector/);
  });

  it('every container that talks to etcd takes the etcd ConfigMap whole and mounts the TLS Secret its settings name', () => {
    const { containers, initContainers, volumes } = daemonSetParts();
    const etcd = configMapData('kube-flannel-etcd');
    expect(Object.keys(etcd).sort()).toEqual(['FLANNELD_ETCD_CAFILE', 'FLANNELD_ETCD_CERTFILE', 'FLANNELD_ETCD_ENDPOINTS', 'FLANNELD_ETCD_KEYFILE', 'FLANNELD_ETCD_PREFIX']);
    const tls = volumes.find((v) => v['name'] === 'etcd-tls') as { secret: { secretName: string; optional: boolean } };
    expect(tls.secret).toMatchObject({ secretName: 'flannel-etcd-tls', optional: true });
    const clients = [...initContainers, ...containers].filter((c) => /\/(flanneld|flannelctl)$/.test(c.command?.[0] ?? ''));
    expect(clients.map((c) => c.name).sort()).toEqual(['kube-flannel', 'put-network-config']);
    for (const c of clients) {
      expect(c.envFrom, c.name).toEqual([{ configMapRef: { name: 'kube-flannel-etcd' } }]);
      // Nothing overrides the shared settings per container.
      expect((c.env ?? []).filter((e) => e.name.startsWith('FLANNELD_ETCD_')), c.name).toEqual([]);
      const mount = c.volumeMounts!.find((m) => m.name === 'etcd-tls');
      expect(mount, c.name).toMatchObject({ mountPath: '/etc/flannel/etcd', readOnly: true });
      for (const key of ['FLANNELD_ETCD_CAFILE', 'FLANNELD_ETCD_CERTFILE', 'FLANNELD_ETCD_KEYFILE']) {
        expect(etcd[key]!.startsWith(`${mount!.mountPath}/`), key).toBe(true);
      }
    }
  });

  it('no container is privileged: flanneld keeps NET_ADMIN and NET_RAW alone, gets /dev/net/tun as a device; init containers keep no capability', () => {
    const { containers, initContainers, volumes } = daemonSetParts();
    const flanneld = containers.find((c) => c.name === 'kube-flannel')!;
    expect(flanneld.securityContext).toEqual({
      privileged: false, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'], add: ['NET_ADMIN', 'NET_RAW'] },
    });
    expect(flanneld.volumeMounts).toContainEqual({ name: 'dev-net-tun', mountPath: '/dev/net/tun' });
    expect(volumes).toContainEqual({ name: 'dev-net-tun', hostPath: { path: '/dev/net/tun', type: 'CharDevice' } });
    for (const c of initContainers) {
      expect(c.securityContext, c.name).toEqual({ allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } });
    }
  });

  it('net-conf.json is a valid flannel network config', () => {
    const cfg = parseNetworkConfig(configMapData()['net-conf.json']!);
    expect(cfg.backend.type).toBe('vxlan');
    expect(cfg.network.toString()).toBe('10.244.0.0/16');
  });

  it('cni-conf.json is a conflist whose flannel entry our plugin accepts', () => {
    const list = JSON.parse(configMapData()['cni-conf.json']!) as { name: string; cniVersion: string; plugins: Obj[] };
    expect(SUPPORTED_VERSIONS).toContain(list.cniVersion);
    expect(list.plugins.map((p) => p['type'])).toEqual(['flannel', 'portmap']);
    // What a runtime passes the plugin: the entry plus the list's name and cniVersion.
    const conf = parseFlannelNetConf(JSON.stringify({ ...list.plugins[0], name: list.name, cniVersion: list.cniVersion }));
    const delegate = buildDelegateConf(conf, {
      networks: [Ip4Net.parse('10.244.0.0/16')],
      subnet: Ip4Net.parse('10.244.3.0/24'),
      mtu: 1450,
      ipMasq: true,
    });
    expect(delegate).toMatchObject({ type: 'bridge', hairpinMode: true, isDefaultGateway: true, isGateway: true, ipMasq: false, mtu: 1450 });
  });

  it.skipIf(!built)('the init containers install the CNI plugin so that it runs with the Node copied next to it', () => {
    const dir = mkdtempSync(join(tmpdir(), 'deploy-cni-'));
    try {
      const { initContainers, volumes } = daemonSetParts();
      const install = initContainers.find((c) => c.name === 'install-cni-plugin')!;
      expect(install.volumeMounts).toEqual([{ name: 'cni-plugin', mountPath: '/host/opt/cni' }]);
      expect(volumes).toContainEqual({ name: 'cni-plugin', hostPath: { path: '/opt/cni', type: 'DirectoryOrCreate' } });
      // The image's tree is what install.sh makes; the init container's script runs from it, with the
      // host's /opt/cni (mounted at /host/opt/cni) under `dir`, and so also the link's target.
      const tree = installedTree();
      // A node that records it ran, standing in for the image's node binary (first on PATH).
      mkdirSync(join(dir, 'path'));
      const fakeNode = join(dir, 'path', 'node');
      writeFileSync(fakeNode, `#!/bin/sh\necho ran >> "${join(dir, 'node-used')}"\nexec ${process.execPath} "$@"\n`);
      chmodSync(fakeNode, 0o755);
      expect(install.command![0]!.startsWith('/usr/local/lib/flanneld-ts/')).toBe(true);
      const script = join(tree, install.command![0]!);
      expect(install.args).toEqual(['--copy', '/host/opt/cni']);
      const hostDir = join(dir, 'host/opt/cni');
      const sh = spawnSync(script, ['--copy', hostDir, '--host-path', hostDir], { encoding: 'utf8', env: { PATH: `${join(dir, 'path')}:/usr/bin:/bin` } });
      expect(sh.status, sh.stderr).toBe(0);
      const plugin = join(dir, 'host/opt/cni/bin/flannel');
      expect(lstatSync(plugin).isSymbolicLink()).toBe(true);
      const version = spawnSync(plugin, [], { input: '{"cniVersion":"1.0.0"}', env: { CNI_COMMAND: 'VERSION', PATH: '/nonexistent' }, encoding: 'utf8' });
      expect(version.status, version.stdout + version.stderr).toBe(0);
      expect(JSON.parse(version.stdout)).toMatchObject({ cniVersion: '1.0.0' });
      expect(readFileSync(join(dir, 'node-used'), 'utf8')).toBe('ran\n');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe.skipIf(!built)('health probes against the real daemon', () => {
  let cluster: Cluster | null = null;
  afterAll(async () => {
    await cluster?.destroy();
  });

  it('the probe paths and port in the DaemonSet are served by flanneld run with its args', async () => {
    const { containers } = daemonSetParts();
    const flanneld = containers.find((c) => c.command?.[0] === '/usr/local/bin/flanneld')!;
    const args = (flanneld.args ?? []).filter((a) => !a.startsWith('--subnet-file')); // the harness gives each node its own
    cluster = await createCluster({ nodes: 1, config: JSON.parse(configMapData()['net-conf.json']!.replace('10.244.0.0/16', '198.19.0.0/16')) as Obj, podsPerNode: 0, daemonArgs: args });
    const node = cluster.nodes[0]!;
    for (const probe of [flanneld.livenessProbe!, flanneld.readinessProbe!]) {
      // The kubelet probes the pod's IP (the node's, with hostNetwork) unless the probe names a host.
      const url = `http://${probe.httpGet.host ?? node.ip}:${probe.httpGet.port}${probe.httpGet.path}`;
      const res = await run([process.execPath, '-e', `fetch(${JSON.stringify(url)}).then((r) => console.log(r.status))`], { netns: node.ns });
      expect(res.stdout.trim(), url).toBe('200');
    }
  });
});

describe('systemd units', () => {
  const hasAnalyze = spawnSync('systemd-analyze', ['--version']).status === 0;
  let dir = '';
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'deploy-systemd-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  function verify(unitPath: string, searchDir?: string): { status: number | null; out: string } {
    const res = spawnSync('systemd-analyze', ['verify', unitPath], {
      encoding: 'utf8',
      env: { ...process.env, ...(searchDir ? { SYSTEMD_UNIT_PATH: `${searchDir}:` } : {}) },
    });
    return { status: res.status, out: (res.stdout + res.stderr).trim() };
  }

  it.skipIf(!hasAnalyze)('flanneld.service verifies; the only complaint is the binary not installed here', () => {
    const original = verify(repoPath('deploy', 'systemd', 'flanneld.service'));
    // Not installed on this machine: exactly this complaint, nothing else.
    expect(original.out).toBe('flanneld.service: Command /usr/local/bin/flanneld is not executable: No such file or directory');
    const copy = join(dir, 'flanneld.service');
    const text = readFileSync(repoPath('deploy', 'systemd', 'flanneld.service'), 'utf8');
    expect(text).toMatch(/^Type=notify$/m);
    expect(text).toMatch(/^EnvironmentFile=-\/etc\/default\/flanneld$/m);
    expect(text).toMatch(/^Restart=always$/m);
    writeFileSync(copy, text.replace('ExecStart=/usr/local/bin/flanneld', 'ExecStart=/bin/true'));
    expect(verify(copy)).toEqual({ status: 0, out: '' });
  });

  it.skipIf(!hasAnalyze)('flanneld.service is sandboxed: systemd-analyze security --offline rates its exposure OK, below 3', () => {
    const text = readFileSync(repoPath('deploy', 'systemd', 'flanneld.service'), 'utf8');
    for (const line of ['ProtectSystem=strict', 'NoNewPrivileges=yes', 'CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW',
      'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK', 'DeviceAllow=/dev/net/tun rw', 'RuntimeDirectory=flannel',
      'RuntimeDirectoryPreserve=yes', 'ReadWritePaths=-/run/xtables.lock -/run/wireguard']) {
      expect(text.split('\n'), line).toContain(line);
    }
    // The env file's directory is the runtime directory, so the default --subnet-file stays writable.
    expect(text).not.toMatch(/^Environment=FLANNELD_SUBNET_FILE=/m);
    const copy = join(dir, 'flanneld.service');
    writeFileSync(copy, text);
    const res = spawnSync('systemd-analyze', ['security', '--offline=true', copy], { encoding: 'utf8' });
    expect(res.status, res.stderr).toBe(0);
    const m = /Overall exposure level for flanneld\.service: (\d+\.\d) (\w+)/.exec(res.stdout);
    expect(m, res.stdout.slice(-500)).not.toBeNull();
    expect(Number(m![1])).toBeLessThan(3);
    expect(m![2]).toBe('OK');
  });

  it.skipIf(!built)("the daemon works inside the unit's capability bounding set with no_new_privs (vxlan, --ip-masq)", async () => {
    const text = readFileSync(repoPath('deploy', 'systemd', 'flanneld.service'), 'utf8');
    const caps = /^CapabilityBoundingSet=(.+)$/m.exec(text)![1]!.split(/\s+/).map((c) => c.replace(/^CAP_/, '').toLowerCase());
    const ns = `fl-${runId()}-cap`;
    const work = mkdtempSync(join(tmpdir(), 'deploy-caps-'));
    await addLoneNodeNetns(ns);
    const etcd = await startEtcd({ netns: ns });
    try {
      await run(['etcdctl', '--endpoints', etcd.endpoint, 'put', '/coreos.com/network/config', '{"Network":"198.19.0.0/16","Backend":{"Type":"vxlan"}}'], { netns: ns, env: { ETCDCTL_API: '3' } });
      const subnetFile = join(work, 'subnet.env');
      // ip netns exec, setpriv and bin/flanneld each exec the next: the child's PID is the daemon's.
      const daemon = spawn('ip', ['netns', 'exec', ns, 'setpriv', `--bounding-set=-all,${caps.map((c) => `+${c}`).join(',')}`, '--inh-caps=-all',
        '--no-new-privs', repoPath('bin', 'flanneld'), `--etcd-endpoints=${etcd.endpoint}`, '--iface=eth0', '--ip-masq', `--subnet-file=${subnetFile}`],
      { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      daemon.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
      const up = await waitFor(async () => existsSync(subnetFile)
        && (await run(['iptables-save', '-t', 'nat'], { netns: ns })).stdout.includes('FLANNEL-POSTRTG')
        && (await run(['ip', 'link', 'show', 'flannel.1'], { netns: ns, allowFail: true })).code === 0, 20_000);
      // The bounding set really is the unit's: the daemon's CapBnd has exactly those bits.
      const bound = /^CapBnd:\s+(\S+)$/m.exec(readFileSync(`/proc/${daemon.pid}/status`, 'utf8'))?.[1];
      await killPid(daemon.pid!);
      expect(up, stderr).toBe(true);
      expect(bound).toBe('0000000000003000'); // CAP_NET_ADMIN (12) and CAP_NET_RAW (13)
    } finally {
      await etcd.stop();
      await delNetns(ns);
      rmSync(work, { recursive: true, force: true });
    }
  }, 90_000);

  it.skipIf(!hasAnalyze)('the docker.service drop-in is picked up and verifies', () => {
    const unitDir = join(dir, 'units');
    mkdirSync(join(unitDir, 'docker.service.d'), { recursive: true });
    writeFileSync(join(unitDir, 'docker.service'), '[Unit]\nDescription=stand-in for the Docker package unit\n[Service]\nExecStart=/bin/false\n');
    // The unit it requires, as installed next to it (with a binary that exists here).
    const flanneld = readFileSync(repoPath('deploy', 'systemd', 'flanneld.service'), 'utf8');
    writeFileSync(join(unitDir, 'flanneld.service'), flanneld.replace('ExecStart=/usr/local/bin/flanneld', 'ExecStart=/bin/true'));
    const dropIn = readFileSync(repoPath('deploy', 'systemd', 'docker.service.d', 'flannel.conf'), 'utf8');
    // Wants=, not Requires=: a flanneld restart must not restart Docker and every container.
    expect(dropIn).toMatch(/^Wants=flanneld\.service$/m);
    expect(dropIn).not.toMatch(/^(Requires|BindsTo|PartOf)=/m);
    expect(dropIn).toMatch(/^After=flanneld\.service$/m);
    // Docker's own ExecStart (with the distribution's flags) is kept; only its environment gains ours.
    expect(dropIn).not.toMatch(/^ExecStart=/m);
    expect(dropIn).toMatch(/^EnvironmentFile=-\/run\/flannel\/docker$/m);
    expect(dropIn).toMatch(/^ExecStartPre=\/usr\/local\/bin\/flannelctl docker-opts .*-d \/run\/flannel\/docker$/m);
    // With flannelctl present, the unit verifies with the package's own ExecStart (here /bin/false).
    const dropInPath = join(unitDir, 'docker.service.d', 'flannel.conf');
    writeFileSync(dropInPath, dropIn.replace('/usr/local/bin/flannelctl', '/bin/true'));
    expect(verify(join(unitDir, 'docker.service'), unitDir)).toEqual({ status: 0, out: '' });
  });

  it.skipIf(!built)('every FLANNELD_* variable in flanneld.default is a flag of the daemon', () => {
    const help = spawnSync(repoPath('bin', 'flanneld'), ['--help'], { encoding: 'utf8' }).stdout;
    const names = [...readFileSync(repoPath('deploy', 'systemd', 'flanneld.default'), 'utf8').matchAll(/^#?(FLANNELD_[A-Z_]+)=/gm)].map((m) => m[1]!);
    expect(names.length).toBeGreaterThan(5);
    for (const name of names) {
      const flag = '--' + name.slice('FLANNELD_'.length).toLowerCase().replaceAll('_', '-');
      expect(help, name).toContain(flag);
    }
  });
});

describe('install.sh', () => {
  let dir = '';
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'deploy-install-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('--dry-run prints the plan and changes nothing', () => {
    const dest = join(dir, 'dry');
    mkdirSync(dest);
    const res = spawnSync(repoPath('deploy', 'install.sh'), ['--dry-run', '--docker', '--cni'], { env: { ...process.env, DESTDIR: dest }, encoding: 'utf8' });
    expect(res.status, res.stderr).toBe(0);
    expect(res.stdout).toContain(`+ ln -sfn /usr/local/lib/flanneld-ts/bin/flanneld ${dest}/usr/local/bin/flanneld`);
    expect(res.stdout).toContain(`${dest}/etc/systemd/system/docker.service.d/flannel.conf`);
    expect(res.stdout).toMatch(/dry run, nothing changed/);
    expect(readdirSync(dest)).toEqual([]);
  });

  it.skipIf(!built)('installs a tree that runs from its new place', () => {
    const dest = installedTree();
    const lib = join(dest, 'usr/local/lib/flanneld-ts');
    expect(readlinkSync(join(dest, 'usr/local/bin/flanneld'))).toBe('/usr/local/lib/flanneld-ts/bin/flanneld');
    expect(readlinkSync(join(dest, 'usr/local/bin/flannelctl'))).toBe('/usr/local/lib/flanneld-ts/bin/flannelctl');
    // The runtime runs the compiled CNI client where there is one (it comes back to bin/flannel when flanneld cannot serve).
    const client = existsSync(repoPath('build/Release/flannel_cni'));
    expect(readlinkSync(join(dest, 'opt/cni/bin/flannel'))).toBe(`/usr/local/lib/flanneld-ts/${client ? 'build/Release/flannel_cni' : 'bin/flannel'}`);
    expect(readFileSync(join(dest, 'etc/systemd/system/flanneld.service'), 'utf8')).toBe(readFileSync(repoPath('deploy/systemd/flanneld.service'), 'utf8'));
    expect(existsSync(join(dest, 'etc/default/flanneld'))).toBe(true);
    expect(existsSync(join(dest, 'etc/systemd/system/docker.service.d/flannel.conf'))).toBe(true);
    // Development tools are pruned, run-time dependencies stay.
    expect(existsSync(join(lib, 'node_modules/etcd3'))).toBe(true);
    expect(existsSync(join(lib, 'node_modules/vitest'))).toBe(false);
    expect(existsSync(join(lib, 'node_modules/typescript'))).toBe(false);
    // The installed programs run (their launchers resolve their own location).
    const ctl = spawnSync(join(lib, 'bin/flannelctl'), ['--help'], { encoding: 'utf8' });
    expect(ctl.status, ctl.stderr).toBe(0);
    expect(ctl.stdout).toContain('flannelctl');
    const daemon = spawnSync(join(lib, 'bin/flanneld'), ['--help'], { encoding: 'utf8' });
    expect(daemon.status, daemon.stderr).toBe(0);
    const plugin = spawnSync(join(lib, 'bin/flannel'), [], { input: '{"cniVersion":"0.4.0"}', env: { CNI_COMMAND: 'VERSION', PATH: process.env['PATH'] ?? '' }, encoding: 'utf8' });
    expect(JSON.parse(plugin.stdout)).toMatchObject({ cniVersion: '0.4.0' });
    if (client) {
      // No flanneld serves this socket: the client runs the standalone plugin of its own tree.
      const env = { CNI_COMMAND: 'VERSION', PATH: process.env['PATH'] ?? '', FLANNEL_CNI_SOCKET: join(dir, 'absent.sock') };
      const viaClient = spawnSync(join(lib, 'build/Release/flannel_cni'), [], { input: '{"cniVersion":"0.3.1"}', env, encoding: 'utf8' });
      expect(viaClient.status, viaClient.stdout + viaClient.stderr).toBe(0);
      expect(JSON.parse(viaClient.stdout)).toMatchObject({ cniVersion: '0.3.1' });
    }
    // An existing /etc/default/flanneld is kept.
    writeFileSync(join(dest, 'etc/default/flanneld'), 'FLANNELD_ETCD_ENDPOINTS=http://198.18.0.254:2379\n');
    expect(spawnSync(repoPath('deploy', 'install.sh'), [], { env: { ...process.env, DESTDIR: dest } }).status).toBe(0);
    expect(readFileSync(join(dest, 'etc/default/flanneld'), 'utf8')).toBe('FLANNELD_ETCD_ENDPOINTS=http://198.18.0.254:2379\n');
  });

  it('refuses to install an unbuilt tree, and unknown options', () => {
    const fake = join(dir, 'unbuilt');
    mkdirSync(join(fake, 'deploy'), { recursive: true });
    copyFileSync(repoPath('deploy', 'install.sh'), join(fake, 'deploy', 'install.sh'));
    chmodSync(join(fake, 'deploy', 'install.sh'), 0o755);
    const res = spawnSync(join(fake, 'deploy', 'install.sh'), ['--dry-run'], { env: { ...process.env, DESTDIR: join(dir, 'x') }, encoding: 'utf8' });
    expect(res.status).toBe(1);
    expect(res.stderr).toMatch(/dist\/flanneld\.mjs is missing: build first/);
    const bad = spawnSync(repoPath('deploy', 'install.sh'), ['--frobnicate'], { encoding: 'utf8' });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/unknown option --frobnicate/);
  });
});

describe('Dockerfile', () => {
  // Node 20 left support on 2026-04-30: the image's Node is the 22 LTS line, which package.json's engines allow.
  it('takes Node 22 LTS from an ARG base, copies paths that exist, and runs what install.sh installs', () => {
    const text = readFileSync(repoPath('deploy', 'Dockerfile'), 'utf8');
    expect(text).toMatch(/^ARG NODE_BASE=docker\.io\/library\/node:22-bookworm-slim$/m);
    expect(text).toMatch(/^ARG RUN_BASE=docker\.io\/library\/debian:bookworm-slim$/m);
    const engines = (JSON.parse(readFileSync(repoPath('package.json'), 'utf8')) as { engines: { node: string } }).engines.node;
    expect(engines).toMatch(/\^22\./);
    expect(text.match(/^FROM (\S+)/gm)).toEqual(['FROM ${NODE_BASE}', 'FROM ${NODE_BASE}', 'FROM scratch', 'FROM tree-${TREE}', 'FROM ${RUN_BASE}']);
    for (const m of text.matchAll(/^COPY (?!--from)(.+) (\S+)$/gm)) {
      for (const source of m[1]!.trim().split(/\s+/)) {
        // .image/tree is the host's tree, staged there by scripts/build-image.sh for the build.
        if (source === '.image/tree/') continue;
        expect(existsSync(repoPath(source)), source).toBe(true);
      }
    }
    expect(text).toContain('deploy/install.sh --no-systemd --cni');
    expect(readFileSync(repoPath('scripts', 'build-image.sh'), 'utf8')).toContain('DESTDIR="$PWD/.image/tree" deploy/install.sh --no-systemd --cni');
    expect(text).toMatch(/^ENTRYPOINT \["\/usr\/local\/bin\/flanneld"\]$/m);
    expect(text).toMatch(/^CMD \[\]$/m);
    // The manifest runs the image scripts/build-image.sh tags by default: flanneld-ts:<version>.
    const version = (JSON.parse(readFileSync(repoPath('package.json'), 'utf8')) as { version: string }).version;
    expect(readFileSync(repoPath('scripts', 'build-image.sh'), 'utf8')).toContain('tag="flanneld-ts:$version"');
    const { containers, initContainers } = daemonSetParts();
    for (const c of [...containers, ...initContainers]) expect(c.image).toBe(`flanneld-ts:${version}`);
  });
});
