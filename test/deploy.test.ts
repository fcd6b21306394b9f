// The deployment files: Kubernetes manifests parsed and checked against the code they configure (the
// network config parser, the CNI plugin's conf parser, the daemon's flags and health endpoints), the
// systemd units through systemd-analyze, and install.sh run into a DESTDIR.
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { buildDelegateConf } from '../src/cni/delegate.js';
import { parseFlannelNetConf } from '../src/cni/netconf.js';
import { SUPPORTED_VERSIONS } from '../src/cni/plugin.js';
import { Ip4Net } from '../src/common/ip4.js';
import { parseNetworkConfig } from '../src/subnet/config.js';
import { createCluster, repoPath, type Cluster } from '../testbed/cluster.js';
import { run } from '../testbed/netns.js';

type Obj = Record<string, unknown>;

interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  env?: { name: string; value?: string; valueFrom?: { configMapKeyRef?: { name: string; key: string } } }[];
  securityContext?: { privileged?: boolean; capabilities?: { add?: string[] } };
  livenessProbe?: { httpGet: { path: string; port: number; host?: string } };
  readinessProbe?: { httpGet: { path: string; port: number; host?: string } };
  volumeMounts?: { name: string; mountPath: string }[];
}

const KUBE_DIR = repoPath('deploy', 'kubernetes');
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
  const docs: Obj[] = [];
  for (const file of readdirSync(KUBE_DIR).filter((f) => /\.ya?ml$/.test(f))) {
    for (const doc of parseAllDocuments(readFileSync(join(KUBE_DIR, file), 'utf8'))) {
      expect(doc.errors, `${file}: ${doc.errors.map(String).join('; ')}`).toEqual([]);
      const value = doc.toJS() as Obj | null;
      if (value !== null) docs.push(value);
    }
  }
  return docs;
}

function byKind(kind: string): Obj {
  const found = manifests().filter((m) => m['kind'] === kind);
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

function configMapData(): Record<string, string> {
  return byKind('ConfigMap')['data'] as Record<string, string>;
}

describe('Kubernetes manifests', () => {
  it('parse, and every object has apiVersion, kind and metadata, in the kube-flannel namespace', () => {
    const docs = manifests();
    expect(docs.map((d) => d['kind']).sort()).toEqual(['ConfigMap', 'DaemonSet', 'Namespace', 'ServiceAccount']);
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
    // Environment values come from ConfigMap keys that exist.
    const data = configMapData();
    for (const e of flanneld!.env ?? []) {
      if (e.valueFrom?.configMapKeyRef) expect(Object.keys(data)).toContain(e.valueFrom.configMapKeyRef.key);
    }
    expect((flanneld!.env ?? []).map((e) => e.name)).toContain('FLANNELD_ETCD_ENDPOINTS');
    // Every volume mounted is declared.
    const declared = daemonSetParts().volumes.map((v) => v['name']);
    for (const c of [...containers, ...daemonSetParts().initContainers]) {
      for (const m of c.volumeMounts ?? []) expect(declared, `${c.name}: ${m.name}`).toContain(m.name);
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
      expect(volumes).toContainEqual({ name: 'cni-plugin', hostPath: { path: '/opt/cni' } });
      // The image's tree is what install.sh makes; the script runs with its paths moved under `dir`.
      const tree = installedTree();
      // A node that records it ran, standing in for the image's node binary.
      const fakeNode = join(dir, 'node-wrapper');
      writeFileSync(fakeNode, `#!/bin/sh\necho ran >> "${join(dir, 'node-used')}"\nexec ${process.execPath} "$@"\n`);
      chmodSync(fakeNode, 0o755);
      const script = install.command![2]!
        .replaceAll('/usr/local/lib/flanneld-ts', join(tree, 'usr/local/lib/flanneld-ts'))
        .replaceAll('/host/', `${dir}/host/`)
        .replaceAll(' /opt/cni/flanneld-ts/', ` ${dir}/host/opt/cni/flanneld-ts/`)
        .replace('$(command -v node)', fakeNode);
      const sh = spawnSync('/bin/sh', ['-c', script], { encoding: 'utf8' });
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
    expect(readlinkSync(join(dest, 'opt/cni/bin/flannel'))).toBe('/usr/local/lib/flanneld-ts/bin/flannel');
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
  it('is based on node:20-slim, copies paths that exist, and runs what install.sh installs', () => {
    const text = readFileSync(repoPath('deploy', 'Dockerfile'), 'utf8');
    expect(text.match(/^FROM (\S+)/gm)).toEqual(['FROM node:20-slim', 'FROM node:20-slim']);
    for (const m of text.matchAll(/^COPY (?!--from)(.+) (\S+)$/gm)) {
      for (const source of m[1]!.trim().split(/\s+/)) expect(existsSync(repoPath(source)), source).toBe(true);
    }
    expect(text).toContain('deploy/install.sh --no-systemd --cni');
    expect(text).toMatch(/^ENTRYPOINT \["\/usr\/local\/bin\/flanneld"\]$/m);
    const { containers, initContainers } = daemonSetParts();
    for (const c of [...containers, ...initContainers]) expect(c.image).toBe('flanneld-ts:0.1.0');
    expect(text).toContain('-t flanneld-ts:0.1.0');
  });
});
