// Distribution conventions: the unit's environment files (Debian's /etc/default, Fedora's
// /etc/sysconfig with FLANNEL_* names and $FLANNEL_OPTIONS) read the way systemd reads them and handed
// to the daemon's real flag parser; install.sh's mk-docker-opts.sh shim and its uninstall path.
import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseDaemonFlags } from '../src/daemon/flags.js';
import { Ip4Net } from '../src/common/ip4.js';
import { writeSubnetEnvFile } from '../src/subnet/envfile.js';
import { repoPath } from '../testbed/cluster.js';
import { addLoneNodeNetns, delNetns, run, runId } from '../testbed/netns.js';

/** Exists, as a file, a directory or a link (even a dangling one). */
function present(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

const unit = readFileSync(repoPath('deploy', 'systemd', 'flanneld.service'), 'utf8');
const built = existsSync(repoPath('dist', 'daemon', 'main.js'));

/** An environment file as systemd reads it: KEY=VALUE lines, # comments, one level of quotes removed. */
function readEnvironmentFile(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!m || line.trimStart().startsWith('#')) continue;
    const v = m[2]!.trim();
    out[m[1]!] = /^(["']).*\1$/.test(v) ? v.slice(1, -1) : v;
  }
  return out;
}

/** What the unit runs: Environment=, then each EnvironmentFile= in order, then ExecStart's $VAR split on whitespace. */
function unitInvocation(files: Record<string, string>): { argv: string[]; env: Record<string, string> } {
  const env: Record<string, string> = {};
  for (const m of unit.matchAll(/^Environment=(\w+)=(.*)$/gm)) env[m[1]!] = m[2]!;
  for (const m of unit.matchAll(/^EnvironmentFile=-?(.+)$/gm)) {
    const text = files[m[1]!];
    if (text !== undefined) Object.assign(env, readEnvironmentFile(text));
  }
  const exec = /^ExecStart=(.+)$/m.exec(unit)![1]!.split(/\s+/);
  const argv = exec.slice(1).flatMap((w) => (/^\$\w+$/.test(w) ? (env[w.slice(1)] ?? '').split(/\s+/).filter((x) => x !== '') : [w]));
  return { argv, env };
}

describe('flanneld.service environment', () => {
  it('reads /etc/sysconfig/flanneld, /etc/default/flanneld and a credentials file, and passes $FLANNEL_OPTIONS as flags', () => {
    expect(unit).toMatch(/^EnvironmentFile=-\/etc\/sysconfig\/flanneld$/m);
    expect(unit).toMatch(/^EnvironmentFile=-\/etc\/default\/flanneld$/m);
    expect(unit).toMatch(/^EnvironmentFile=-\/etc\/flannel\/credentials\.env$/m);
    expect(unit).toMatch(/^ExecStart=\/usr\/local\/bin\/flanneld \$FLANNEL_OPTIONS$/m);
  });

  it("a Fedora sysconfig file (FLANNEL_ETCD_ENDPOINTS, FLANNEL_ETCD_PREFIX, FLANNEL_OPTIONS) configures the daemon", () => {
    const { argv, env } = unitInvocation({
      '/etc/sysconfig/flanneld': [
        '# Flanneld configuration options',
        'FLANNEL_ETCD_ENDPOINTS="http://198.18.0.254:2379"',
        'FLANNEL_ETCD_PREFIX="/atomic.io/network"',
        'FLANNEL_OPTIONS="-iface=eth1 -ip-masq -v=2"',
      ].join('\n'),
    });
    expect(argv).toEqual(['-iface=eth1', '-ip-masq', '-v=2']);
    const o = parseDaemonFlags(argv, env);
    expect(o.etcd).toEqual({ endpoints: ['http://198.18.0.254:2379'], prefix: '/atomic.io/network' });
    expect(o).toMatchObject({ iface: ['eth1'], ipMasq: true, logLevel: 'debug', logFormat: 'text', warnings: [] });
  });

  it('the Debian default file, with the password from the 0600 credentials file, and no FLANNEL_OPTIONS', () => {
    const { argv, env } = unitInvocation({
      '/etc/default/flanneld': readFileSync(repoPath('deploy', 'systemd', 'flanneld.default'), 'utf8') + 'FLANNELD_LOG_FORMAT=json\n',
      '/etc/flannel/credentials.env': 'FLANNELD_ETCD_USERNAME=flannel\nFLANNELD_ETCD_PASSWORD=s3cret\n',
    });
    expect(argv).toEqual([]);
    const o = parseDaemonFlags(argv, env);
    expect(o.etcd).toMatchObject({ endpoints: ['http://127.0.0.1:2379'], username: 'flannel', password: 's3cret' });
    expect(o).toMatchObject({ ipMasq: true, logFormat: 'json', warnings: [] });
  });
});

describe('install.sh: mk-docker-opts.sh shim and uninstall', () => {
  let dir = '';
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'deploy-distro-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it.skipIf(!built)('installs the shim where distribution units call it, and it writes the Docker env file', () => {
    const dest = join(dir, 'root');
    const res = spawnSync(repoPath('deploy', 'install.sh'), ['--docker', '--cni'], { env: { ...process.env, DESTDIR: dest }, encoding: 'utf8' });
    expect(res.status, res.stderr).toBe(0);
    const shim = join(dest, 'usr/libexec/flannel/mk-docker-opts.sh');
    expect(lstatSync(shim).isSymbolicLink()).toBe(true);
    const env = join(dir, 'subnet.env');
    writeSubnetEnvFile(env, { networks: [Ip4Net.parse('198.19.0.0/16')], subnet: Ip4Net.parse('198.19.46.0/24'), mtu: 1450, ipMasq: true });
    const out = join(dir, 'docker');
    // The link points into /usr/local/lib under DESTDIR; run the installed tree's copy it points to.
    const target = join(dest, 'usr/local/lib/flanneld-ts/deploy/mk-docker-opts.sh');
    const run = spawnSync(target, ['-k', 'DOCKER_NETWORK_OPTIONS', '-c', '-f', env, '-d', out], { encoding: 'utf8', env: { PATH: process.env['PATH'] ?? '' } });
    expect(run.status, run.stderr).toBe(0);
    expect(readFileSync(out, 'utf8')).toBe('DOCKER_NETWORK_OPTIONS=" --bip=198.19.46.1/24 --ip-masq=false --mtu=1450"\n');

    // --uninstall --dry-run changes nothing; --uninstall removes our files and keeps the settings.
    writeFileSync(join(dest, 'etc/default/flanneld'), 'FLANNELD_ETCD_ENDPOINTS=http://198.18.0.254:2379\n');
    mkdirSync(join(dest, 'etc/flannel'), { recursive: true });
    writeFileSync(join(dest, 'etc/flannel/credentials.env'), 'FLANNELD_ETCD_PASSWORD=x\n', { mode: 0o600 });
    const before = spawnSync('find', [dest], { encoding: 'utf8' }).stdout;
    const dry = spawnSync(repoPath('deploy', 'install.sh'), ['--uninstall', '--dry-run'], { env: { ...process.env, DESTDIR: dest }, encoding: 'utf8' });
    expect(dry.status, dry.stderr).toBe(0);
    expect(dry.stdout).toContain(`+ rm -rf ${dest}/usr/local/lib/flanneld-ts`);
    expect(spawnSync('find', [dest], { encoding: 'utf8' }).stdout).toBe(before);
    const un = spawnSync(repoPath('deploy', 'install.sh'), ['--uninstall'], { env: { ...process.env, DESTDIR: dest }, encoding: 'utf8' });
    expect(un.status, un.stderr).toBe(0);
    for (const gone of ['usr/local/lib/flanneld-ts', 'usr/local/bin/flanneld', 'usr/local/bin/flannelctl', 'usr/libexec/flannel', 'opt/cni/bin/flannel',
      'etc/systemd/system/flanneld.service', 'etc/systemd/system/docker.service.d/flannel.conf']) {
      expect(present(join(dest, gone)), gone).toBe(false);
    }
    expect(readFileSync(join(dest, 'etc/default/flanneld'), 'utf8')).toBe('FLANNELD_ETCD_ENDPOINTS=http://198.18.0.254:2379\n');
    expect(existsSync(join(dest, 'etc/flannel/credentials.env'))).toBe(true);
    const purge = spawnSync(repoPath('deploy', 'install.sh'), ['--uninstall', '--purge'], { env: { ...process.env, DESTDIR: dest }, encoding: 'utf8' });
    expect(purge.status, purge.stderr).toBe(0);
    expect(existsSync(join(dest, 'etc/default/flanneld'))).toBe(false);
    expect(existsSync(join(dest, 'etc/flannel'))).toBe(false);
    expect(readdirSync(join(dest, 'usr/local/bin'))).toEqual([]);
  }, 120_000);

  it('leaves a flannel CNI plugin that is not ours in place', () => {
    const dest = join(dir, 'foreign');
    mkdirSync(join(dest, 'opt/cni/bin'), { recursive: true });
    writeFileSync(join(dest, 'opt/cni/bin/flannel'), '#!/bin/sh\n', { mode: 0o755 });
    const un = spawnSync(repoPath('deploy', 'install.sh'), ['--uninstall'], { env: { ...process.env, DESTDIR: dest }, encoding: 'utf8' });
    expect(un.status, un.stderr).toBe(0);
    expect(existsSync(join(dest, 'opt/cni/bin/flannel'))).toBe(true);
    expect(spawnSync(repoPath('deploy', 'install.sh'), ['--purge'], { encoding: 'utf8' }).status).toBe(2);
  });

  // On a machine's own root (no DESTDIR): a namespace of its own for the kernel state, and, inside it,
  // fresh file systems over the directories install.sh writes to, so nothing of this machine is touched.
  it.skipIf(!built)('--uninstall --purge on a real root first runs flannelctl node cleanup with the unit\'s settings', async () => {
    const ns = `fl-${runId()}-purge`;
    const work = mkdtempSync(join(tmpdir(), 'deploy-purge-'));
    const envFile = join(work, 'subnet.env');
    const script = [
      'set -eu',
      'for d in /usr/local /usr/libexec /opt /etc/default; do mount -t tmpfs tmpfs "$d"; done',
      `"${repoPath('deploy', 'install.sh')}" --no-systemd --cni >/dev/null`,
      // The unit's settings name a subnet file elsewhere: cleanup must take it from there.
      `printf 'FLANNELD_SUBNET_FILE=%s\\n' "${envFile}" > /etc/default/flanneld`,
      `printf 'FLANNEL_NETWORK=198.19.0.0/16\\nFLANNEL_SUBNET=198.19.5.1/24\\nFLANNEL_MTU=1450\\nFLANNEL_IPMASQ=true\\n' > "${envFile}"`,
      'ip link add flannel.1 type vxlan id 1 dev eth0 dstport 8472',
      'iptables -N FLANNEL-FWD',
      'iptables -I FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
      `"${repoPath('deploy', 'install.sh')}" --uninstall --purge`,
      'echo "links: $(ip -o link show | grep -c flannel || true)"',
      'echo "rules: $(iptables-save | grep -c FLANNEL || true)"',
      'echo "lib: $(ls -A /usr/local/lib)"; echo "cni: $(ls -A /opt/cni/bin)"; echo "default: $(ls -A /etc/default)"',
    ].join('\n');
    await addLoneNodeNetns(ns);
    try {
      const res = await run(['ip', 'netns', 'exec', ns, 'sh', '-c', script], { allowFail: true, timeoutMs: 120_000 });
      expect(res.code, res.stdout + res.stderr).toBe(0);
      expect(res.stdout).toContain('removed device flannel.1 (vxlan)');
      expect(res.stdout).toContain(`removed subnet file ${envFile}`);
      expect(res.stdout).toContain('links: 0\n');
      expect(res.stdout).toContain('rules: 0\n');
      for (const empty of ['lib', 'cni', 'default']) expect(res.stdout).toContain(`\n${empty}: \n`);
      expect(existsSync(envFile)).toBe(false);
    } finally {
      await delNetns(ns);
      rmSync(work, { recursive: true, force: true });
    }
  }, 150_000);
});
