// `flannelctl docker-opts` (upstream's mk-docker-opts.sh) against subnet env files written by the
// daemon's own writer, for the udp backend (MTU 1472) and the vxlan backend (MTU 1450).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import yargs from 'yargs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dockerOptsCommand, formatDockerOpts, readFlannelEnv } from '../src/ctl/docker-opts.js';
import { writeSubnetEnvFile } from '../src/subnet/envfile.js';
import { Ip4Net } from '../src/subnet/ip4.js';
import { repoPath } from './harness/cluster.js';

const BOTH = { combinedKey: 'DOCKER_OPTS', individual: false, combined: false, ipMasq: true, environment: {} };

describe('docker-opts', () => {
  let dir = '';
  const envFiles: Record<string, string> = {};

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'docker-opts-'));
    const network = Ip4Net.parse('198.19.0.0/16');
    for (const [name, mtu, ipMasq] of [['udp', 1472, false], ['vxlan', 1450, false], ['vxlan-masq', 1450, true]] as const) {
      envFiles[name] = join(dir, `${name}.env`);
      writeSubnetEnvFile(envFiles[name]!, { networks: [network], subnet: Ip4Net.parse('198.19.46.0/24'), mtu, ipMasq });
    }
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('writes --bip and --mtu for the udp and vxlan backends', () => {
    expect(formatDockerOpts(readFlannelEnv(envFiles['udp']!), BOTH)).toBe(
      'DOCKER_OPT_BIP="--bip=198.19.46.1/24"\nDOCKER_OPT_MTU="--mtu=1472"\nDOCKER_OPTS=" --bip=198.19.46.1/24 --mtu=1472 "\n',
    );
    expect(formatDockerOpts(readFlannelEnv(envFiles['vxlan']!), BOTH)).toBe(
      'DOCKER_OPT_BIP="--bip=198.19.46.1/24"\nDOCKER_OPT_MTU="--mtu=1450"\nDOCKER_OPTS=" --bip=198.19.46.1/24 --mtu=1450 "\n',
    );
  });

  it('turns Docker masquerading off when flanneld masquerades, unless -m', () => {
    const env = readFlannelEnv(envFiles['vxlan-masq']!);
    expect(formatDockerOpts(env, BOTH)).toBe(
      'DOCKER_OPT_BIP="--bip=198.19.46.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=false"\nDOCKER_OPT_MTU="--mtu=1450"\n' +
        'DOCKER_OPTS=" --bip=198.19.46.1/24 --ip-masq=false --mtu=1450 "\n',
    );
    expect(formatDockerOpts(env, { ...BOTH, ipMasq: false })).not.toContain('ip-masq');
  });

  it('honours -c, -i, -k and options already in the environment', () => {
    const env = readFlannelEnv(envFiles['vxlan']!);
    expect(formatDockerOpts(env, { ...BOTH, combined: true })).toBe('DOCKER_OPTS=" --bip=198.19.46.1/24 --mtu=1450 "\n');
    expect(formatDockerOpts(env, { ...BOTH, individual: true })).toBe('DOCKER_OPT_BIP="--bip=198.19.46.1/24"\nDOCKER_OPT_MTU="--mtu=1450"\n');
    expect(formatDockerOpts(env, { ...BOTH, combined: true, combinedKey: 'FLANNEL_DOCKER_OPTS' })).toBe(
      'FLANNEL_DOCKER_OPTS=" --bip=198.19.46.1/24 --mtu=1450 "\n',
    );
    const environment = { DOCKER_OPTS: '--debug', DOCKER_OPT_A_LOG: '--log-level=warn', HOME: '/root' };
    expect(formatDockerOpts(env, { ...BOTH, environment })).toBe(
      'DOCKER_OPT_A_LOG="--log-level=warn"\nDOCKER_OPT_BIP="--bip=198.19.46.1/24"\nDOCKER_OPT_MTU="--mtu=1450"\n' +
        'DOCKER_OPTS="--debug --log-level=warn --bip=198.19.46.1/24 --mtu=1450 "\n',
    );
    expect(() => formatDockerOpts(env, { ...BOTH, combinedKey: 'BAD KEY' })).toThrow(/not a variable name/);
    expect(() => formatDockerOpts({ FLANNEL_SUBNET: '1.2.3.4/24"; rm -rf /' }, BOTH)).toThrow(/cannot be quoted/);
  });

  it('fails clearly on a missing or empty subnet file', () => {
    expect(() => readFlannelEnv(join(dir, 'absent.env'))).toThrow(/absent\.env does not exist \(is flanneld running/);
    const empty = join(dir, 'empty.env');
    writeFileSync(empty, 'FLANNEL_NETWORK=198.19.0.0/16\n');
    expect(() => readFlannelEnv(empty)).toThrow(/empty\.env has no FLANNEL_SUBNET/);
  });

  it('runs as a yargs command with the upstream short flags', async () => {
    const out = join(dir, 'docker_opts.env');
    await yargs().command(dockerOptsCommand).strict().parseAsync(['docker-opts', '-f', envFiles['vxlan-masq']!, '-d', out, '-c', '-k', 'OPTS']);
    expect(readFileSync(out, 'utf8')).toBe('OPTS=" --bip=198.19.46.1/24 --ip-masq=false --mtu=1450 "\n');
    await yargs().command(dockerOptsCommand).strict().parseAsync(['docker-opts', '-f', envFiles['udp']!, '-d', out, '-i', '-m']);
    expect(readFileSync(out, 'utf8')).toBe('DOCKER_OPT_BIP="--bip=198.19.46.1/24"\nDOCKER_OPT_MTU="--mtu=1472"\n');
  });

  // Through the real flannelctl binary once the lead has registered the command there.
  const flannelctl = repoPath('bin', 'flannelctl');
  const registered =
    existsSync(repoPath('dist', 'ctl', 'main.js')) &&
    readFileSync(repoPath('dist', 'ctl', 'main.js'), 'utf8').includes('dockerOptsCommand');
  it.skipIf(!registered)('flannelctl docker-opts writes the file systemd reads', () => {
    const out = join(dir, 'ctl_docker_opts.env');
    const res = spawnSync(flannelctl, ['docker-opts', '-f', envFiles['udp']!, '-d', out], { encoding: 'utf8', env: { PATH: process.env['PATH'] ?? '' } });
    expect(res.status, res.stderr).toBe(0);
    expect(readFileSync(out, 'utf8')).toBe('DOCKER_OPT_BIP="--bip=198.19.46.1/24"\nDOCKER_OPT_MTU="--mtu=1472"\nDOCKER_OPTS=" --bip=198.19.46.1/24 --mtu=1472 "\n');
    const missing = spawnSync(flannelctl, ['docker-opts', '-f', join(dir, 'absent.env'), '-d', out], { encoding: 'utf8' });
    expect(missing.status).not.toBe(0);
    expect(missing.stderr).toMatch(/absent\.env does not exist/);
  });
});
