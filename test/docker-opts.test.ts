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
import { Ip4Net } from '../src/common/ip4.js';
import { repoPath } from '../testbed/cluster.js';
import { addLoneNodeNetns, delNetns, run, runId } from '../testbed/netns.js';

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

  // Expected texts are what upstream's current mk-docker-opts.sh writes for the same env files: it turns
  // Docker's masquerading on when flanneld's is off (--ip-masq=true), and ends DOCKER_OPTS without a space.
  it('writes --bip, --mtu and --ip-masq for the udp and vxlan backends', () => {
    expect(formatDockerOpts(readFlannelEnv(envFiles['udp']!), BOTH)).toBe(
      'DOCKER_OPT_BIP="--bip=198.19.46.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=true"\nDOCKER_OPT_MTU="--mtu=1472"\nDOCKER_OPTS=" --bip=198.19.46.1/24 --ip-masq=true --mtu=1472"\n',
    );
    expect(formatDockerOpts(readFlannelEnv(envFiles['vxlan']!), BOTH)).toBe(
      'DOCKER_OPT_BIP="--bip=198.19.46.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=true"\nDOCKER_OPT_MTU="--mtu=1450"\nDOCKER_OPTS=" --bip=198.19.46.1/24 --ip-masq=true --mtu=1450"\n',
    );
  });

  it('turns Docker masquerading off when flanneld masquerades, unless -m', () => {
    const env = readFlannelEnv(envFiles['vxlan-masq']!);
    expect(formatDockerOpts(env, BOTH)).toBe(
      'DOCKER_OPT_BIP="--bip=198.19.46.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=false"\nDOCKER_OPT_MTU="--mtu=1450"\n' +
        'DOCKER_OPTS=" --bip=198.19.46.1/24 --ip-masq=false --mtu=1450"\n',
    );
    expect(formatDockerOpts(env, { ...BOTH, ipMasq: false })).not.toContain('ip-masq');
    expect(formatDockerOpts(readFlannelEnv(envFiles['vxlan']!), { ...BOTH, ipMasq: false })).not.toContain('ip-masq');
    expect(() => formatDockerOpts({ FLANNEL_IPMASQ: 'maybe' }, BOTH)).toThrow(/^Invalid value of FLANNEL_IPMASQ: maybe$/);
  });

  it('honours -c, -i, -k and options already in the environment', () => {
    const env = readFlannelEnv(envFiles['vxlan']!);
    expect(formatDockerOpts(env, { ...BOTH, combined: true })).toBe('DOCKER_OPTS=" --bip=198.19.46.1/24 --ip-masq=true --mtu=1450"\n');
    expect(formatDockerOpts(env, { ...BOTH, individual: true })).toBe(
      'DOCKER_OPT_BIP="--bip=198.19.46.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=true"\nDOCKER_OPT_MTU="--mtu=1450"\n',
    );
    expect(formatDockerOpts(env, { ...BOTH, combined: true, combinedKey: 'FLANNEL_DOCKER_OPTS' })).toBe(
      'FLANNEL_DOCKER_OPTS=" --bip=198.19.46.1/24 --ip-masq=true --mtu=1450"\n',
    );
    const environment = { DOCKER_OPTS: '--debug', DOCKER_OPT_A_LOG: '--log-level=warn', HOME: '/root' };
    expect(formatDockerOpts(readFlannelEnv(envFiles['vxlan-masq']!), { ...BOTH, environment })).toBe(
      'DOCKER_OPT_A_LOG="--log-level=warn"\nDOCKER_OPT_BIP="--bip=198.19.46.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=false"\nDOCKER_OPT_MTU="--mtu=1450"\n' +
        'DOCKER_OPTS="--debug  --log-level=warn --bip=198.19.46.1/24 --ip-masq=false --mtu=1450"\n',
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
    expect(readFileSync(out, 'utf8')).toBe('OPTS=" --bip=198.19.46.1/24 --ip-masq=false --mtu=1450"\n');
    await yargs().command(dockerOptsCommand).strict().parseAsync(['docker-opts', '-f', envFiles['udp']!, '-d', out, '-i', '-m']);
    expect(readFileSync(out, 'utf8')).toBe('DOCKER_OPT_BIP="--bip=198.19.46.1/24"\nDOCKER_OPT_MTU="--mtu=1472"\n');
  });

  // Through the real flannelctl binary, once the command is registered there.
  const flannelctl = repoPath('bin', 'flannelctl');
  const registered =
    existsSync(repoPath('dist', 'ctl', 'main.js')) &&
    readFileSync(repoPath('dist', 'ctl', 'main.js'), 'utf8').includes('dockerOptsCommand');
  it.skipIf(!registered)('flannelctl docker-opts writes the file systemd reads', () => {
    const out = join(dir, 'ctl_docker_opts.env');
    const res = spawnSync(flannelctl, ['docker-opts', '-f', envFiles['udp']!, '-d', out], { encoding: 'utf8', env: { PATH: process.env['PATH'] ?? '' } });
    expect(res.status, res.stderr).toBe(0);
    expect(readFileSync(out, 'utf8')).toBe(
      'DOCKER_OPT_BIP="--bip=198.19.46.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=true"\nDOCKER_OPT_MTU="--mtu=1472"\nDOCKER_OPTS=" --bip=198.19.46.1/24 --ip-masq=true --mtu=1472"\n',
    );
    const missing = spawnSync(flannelctl, ['docker-opts', '-f', join(dir, 'absent.env'), '-d', out], { encoding: 'utf8' });
    expect(missing.status).not.toBe(0);
    expect(missing.stderr).toMatch(/absent\.env does not exist/);
  });
});

// deploy/mk-docker-opts.sh takes upstream's script's flags; for each, the file must be what upstream's
// script writes (texts recorded from upstream's dist/mk-docker-opts.sh run on the same env files).
describe('mk-docker-opts.sh shim', () => {
  const ns = `fl-${runId()}-mkdo`;
  const shim = repoPath('deploy', 'mk-docker-opts.sh');
  let dir = '';
  let masqOff = '';
  let masqOn = '';
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'mk-docker-opts-'));
    masqOff = join(dir, 'off.env');
    masqOn = join(dir, 'on.env');
    const network = Ip4Net.parse('198.19.0.0/16');
    writeSubnetEnvFile(masqOff, { networks: [network], subnet: Ip4Net.parse('198.19.46.0/24'), mtu: 1450, ipMasq: false });
    writeSubnetEnvFile(masqOn, { networks: [network], subnet: Ip4Net.parse('198.19.46.0/24'), mtu: 1450, ipMasq: true });
    // Its own routing table: the script's route check must not see the host's.
    await addLoneNodeNetns(ns);
  });
  afterAll(async () => {
    await delNetns(ns);
    rmSync(dir, { recursive: true, force: true });
  });

  const shimRun = (args: string[], env: Record<string, string> = {}) =>
    run(['env', '-i', `PATH=${process.env['PATH'] ?? ''}`, ...Object.entries(env).map(([k, v]) => `${k}=${v}`), shim, ...args], { netns: ns, allowFail: true });

  const BIP = 'DOCKER_OPT_BIP="--bip=198.19.46.1/24"\n';
  const MTU = 'DOCKER_OPT_MTU="--mtu=1450"\n';
  const cases: [string, string[], string][] = [
    ['off', [], `${BIP}DOCKER_OPT_IPMASQ="--ip-masq=true"\n${MTU}DOCKER_OPTS=" --bip=198.19.46.1/24 --ip-masq=true --mtu=1450"\n`],
    ['on', [], `${BIP}DOCKER_OPT_IPMASQ="--ip-masq=false"\n${MTU}DOCKER_OPTS=" --bip=198.19.46.1/24 --ip-masq=false --mtu=1450"\n`],
    ['off', ['-c'], 'DOCKER_OPTS=" --bip=198.19.46.1/24 --ip-masq=true --mtu=1450"\n'],
    ['on', ['-i'], `${BIP}DOCKER_OPT_IPMASQ="--ip-masq=false"\n${MTU}`],
    ['off', ['-m'], `${BIP}${MTU}DOCKER_OPTS=" --bip=198.19.46.1/24 --mtu=1450"\n`],
    ['on', ['-ic', '-m'], `${BIP}${MTU}DOCKER_OPTS=" --bip=198.19.46.1/24 --mtu=1450"\n`],
    ['off', ['-k', 'FOO'], `${BIP}DOCKER_OPT_IPMASQ="--ip-masq=true"\n${MTU}FOO=" --bip=198.19.46.1/24 --ip-masq=true --mtu=1450"\n`],
    ['on', ['-kFOO', '-c'], 'FOO=" --bip=198.19.46.1/24 --ip-masq=false --mtu=1450"\n'],
    ['on', ['-i', '-c'], `${BIP}DOCKER_OPT_IPMASQ="--ip-masq=false"\n${MTU}DOCKER_OPTS=" --bip=198.19.46.1/24 --ip-masq=false --mtu=1450"\n`],
  ];
  it.each(cases)('FLANNEL_IPMASQ %s, flags %j: the same file as upstream', async (masq, flags, expected) => {
    const out = join(dir, `out-${masq}-${flags.join('')}.env`);
    const res = await shimRun(['-f', masq === 'on' ? masqOn : masqOff, '-d', out, ...flags]);
    expect(res.code, res.stderr).toBe(0);
    expect(readFileSync(out, 'utf8')).toBe(expected);
  });

  it('passes on DOCKER_OPTS and DOCKER_OPT_* from its environment, as upstream', async () => {
    const out = join(dir, 'env.env');
    const res = await shimRun(['-f', masqOn, '-d', out], { DOCKER_OPTS: '--debug', DOCKER_OPT_A_LOG: '--log-level=warn' });
    expect(res.code, res.stderr).toBe(0);
    expect(readFileSync(out, 'utf8')).toBe(
      `DOCKER_OPT_A_LOG="--log-level=warn"\n${BIP}DOCKER_OPT_IPMASQ="--ip-masq=false"\n${MTU}` +
        'DOCKER_OPTS="--debug  --log-level=warn --bip=198.19.46.1/24 --ip-masq=false --mtu=1450"\n',
    );
  });

  it('prints its usage and exits 1 on -h or an unknown flag', async () => {
    for (const flag of ['-h', '-x']) {
      const res = await shimRun([flag]);
      expect(res.code).toBe(1);
      expect(res.stderr).toContain('[-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]');
    }
  });

  it('fails, as upstream, when a route through a gateway already covers the subnet', async () => {
    await run(['ip', '-n', ns, 'route', 'add', '198.19.46.0/24', 'via', '198.18.0.254', 'dev', 'eth0']);
    try {
      const out = join(dir, 'route.env');
      const res = await shimRun(['-f', masqOn, '-d', out]);
      expect(res.code).toBe(1);
      expect(res.stderr).toMatch(/Your routing table already contains the subnet: 198\.19\.46\.0\/24 via 198\.18\.0\.254 dev eth0/);
      expect(readFileSync(out, 'utf8')).toContain('DOCKER_OPTS=');
    } finally {
      await run(['ip', '-n', ns, 'route', 'del', '198.19.46.0/24'], { allowFail: true });
    }
  });
});
