// The npm package: `npm pack` (which builds first) in a copy of the repository, then `npm install -g`
// of the tarball into an empty prefix, gives three working commands. The tarball holds what runs and
// nothing else; the native addon is compiled from its sources at install time (node-gyp).
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoPath } from '../testbed/cluster.js';
import { run } from '../testbed/netns.js';

const pkg = JSON.parse(readFileSync(repoPath('package.json'), 'utf8')) as {
  name: string; version: string; bin: Record<string, string>; files: string[]; engines: { node: string }; scripts: Record<string, string>;
};

describe('npm package', () => {
  let dir = '';
  let tarball = '';
  let prefix = '';
  const env = { npm_config_nodedir: process.env['npm_config_nodedir'] ?? (existsSync('/usr/include/node/node.h') ? '/usr' : '') };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'npm-package-'));
    // A copy, so that prepack's fresh build never touches the dist/ other tests are running.
    const copy = join(dir, 'src');
    cpSync(repoPath(), copy, {
      recursive: true,
      filter: (p) => !/\/(node_modules|dist|build|\.git|\.demo)(\/|$)/.test(p.slice(repoPath().length)),
    });
    symlinkSync(repoPath('node_modules'), join(copy, 'node_modules'));
    const packed = await run(['sh', '-c', 'cd "$1" && exec npm pack --pack-destination "$2" --no-audit --no-fund', 'sh', copy, dir], { env, timeoutMs: 180_000 });
    tarball = join(dir, packed.stdout.trim().split('\n').pop()!);
    prefix = join(dir, 'prefix');
    const installed = await run(['npm', 'install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', tarball], { env, timeoutMs: 180_000 });
    expect(installed.code, installed.stderr).toBe(0);
  }, 400_000);
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('declares the three commands, build scripts and the Node versions its dependencies need', () => {
    expect(pkg.bin).toEqual({ flanneld: 'bin/flanneld', flannelctl: 'bin/flannelctl', flannel: 'bin/flannel' });
    expect(pkg.scripts['prepare']).toBe('npm run build');
    expect(pkg.scripts['prepack']).toMatch(/npm run build$/);
    // yargs 18 needs ^20.19.0 || ^22.12.0 || >=23, the narrowest range among the dependencies.
    const yargsEngines = (JSON.parse(readFileSync(repoPath('node_modules/yargs/package.json'), 'utf8')) as { engines: { node: string } }).engines.node;
    expect(pkg.engines.node).toBe(yargsEngines);
  });

  it('packs what runs and nothing else', async () => {
    const files = (await run(['tar', '-tzf', tarball])).stdout.trim().split('\n').map((f) => f.replace(/^package\//, ''));
    for (const needed of ['bin/flanneld', 'bin/flannelctl', 'bin/flannel', 'dist/flanneld.mjs', 'dist/ctl/main.js', 'dist/cni/main.js',
      'dist/flannel-cni.mjs', 'binding.gyp', 'src/native/cni_client.c', 'src/native/addon.cc', 'src/native/sdnotify.cc', 'src/native/memory.cc', 'deploy/mk-docker-opts.sh', 'deploy/systemd/flanneld.service', 'package.json', 'README.md']) {
      expect(files, needed).toContain(needed);
    }
    for (const f of files) {
      expect(f, f).not.toMatch(/^(test|bench|scripts|node_modules|build)\/|\.map$|^src\/(?!native\/)|\.ts$|^tsconfig/);
    }
  });

  it('npm install -g of the tarball gives working flanneld, flannelctl and flannel commands', async () => {
    expect(readdirSync(join(prefix, 'bin')).sort()).toEqual(['flannel', 'flannelctl', 'flanneld']);
    const lib = join(prefix, 'lib/node_modules', pkg.name);
    expect(readdirSync(join(lib, 'build/Release')).filter((f) => f.endsWith('.node')).sort()).toEqual(['flannel_memory.node', 'flannel_native.node', 'flannel_netlink.node', 'flannel_sdnotify.node']);
    const daemon = await run([join(prefix, 'bin/flanneld'), '--version'], { allowFail: true });
    expect(daemon.stdout.trim(), daemon.stderr).toBe(pkg.version);
    const help = await run([join(prefix, 'bin/flanneld'), '--help'], { allowFail: true });
    expect(help.stdout).toContain('--etcd-endpoints');
    const ctl = await run([join(prefix, 'bin/flannelctl'), '--help'], { allowFail: true });
    expect(ctl.code, ctl.stderr).toBe(0);
    expect(ctl.stdout).toMatch(/flannelctl lease <action> <subnet>/);
    const cni = await run(['env', `PATH=${process.env['PATH'] ?? ''}`, 'CNI_COMMAND=VERSION', join(prefix, 'bin/flannel')], { input: '{"cniVersion":"1.0.0"}', allowFail: true });
    expect(cni.code, cni.stdout + cni.stderr).toBe(0);
    expect(JSON.parse(cni.stdout)).toMatchObject({ cniVersion: '1.0.0' });
    // The CNI plugin's client is compiled at install, where the plugin finds it; with no flanneld
    // serving, it runs the installed standalone plugin.
    const client = join(lib, 'build/Release/flannel_cni');
    const viaClient = await run(['env', `PATH=${process.env['PATH'] ?? ''}`, 'CNI_COMMAND=VERSION', `FLANNEL_CNI_SOCKET=${join(prefix, 'absent.sock')}`, client], { input: '{"cniVersion":"0.4.0"}', allowFail: true });
    expect(viaClient.code, viaClient.stdout + viaClient.stderr).toBe(0);
    expect(JSON.parse(viaClient.stdout)).toMatchObject({ cniVersion: '0.4.0' });
    // The installed addon loads: the udp backend's data path is there.
    const addon = await run([process.execPath, '-e', `const m = require(${JSON.stringify(join(lib, 'build/Release/flannel_native.node'))}); console.log(typeof m)`]);
    expect(addon.stdout.trim()).toBe('object');
  }, 60_000);
});
