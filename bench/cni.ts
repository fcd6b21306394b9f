// Pod network setup: the time and CPU a CNI ADD and DEL take, per plugin, in one run on one node.
// A one-node host-gw cluster (a real etcd and bin/flanneld in a namespace, at the default log level,
// started with --iptables-forward-rules=false so that its periodic iptables checks do not count as CNI work);
// every variant uses the same conflist shape as kube-flannel's (flannel delegating to bridge and
// host-local, then portmap) and the node's subnet env file:
//   floor            bridge + host-local (the conf flannel would hand them) and portmap, no flannel
//   upstream         flannel-io/cni-plugin's Go plugin, if $FLANNEL_UPSTREAM_CNI names it or
//                    `flannel-cni` is on PATH (built by hand: /work/shared/reference/building-anchors.md)
//   ours, daemon     the compiled client (build/Release/flannel_cni), served by the node's flanneld
//   ours, bin/flannel  the same through bin/flannel (the script hands over to the client)
//   ours, standalone the compiled client with no flanneld socket: it runs the standalone plugin
//   baseline         any plugin executable named by $FLANNEL_BENCH_BASELINE (e.g. an older tree's bin/flannel),
//                    described in the table by $FLANNEL_BENCH_BASELINE_LABEL
// The runtime's side runs inside the node's namespace (bench/cni-driver.ts): `cnitool` if on PATH
// (or $CNITOOL), else the conflist's plugins executed directly as libcni does.
// Latency: --rounds ADD+DEL pairs per variant (after --warmup), the variants taking turns; median and
// p90. Bursts: N pods at once for each N of --burst-sizes, --bursts times; wall time from the first
// spawn to the last exit, and CPU of the whole process tree (see bench/cni-driver.ts).
// Writes docs/benchmarks.md (between the cni markers) and docs/img/cni-burst.svg unless --no-write.
//
// npm run bench:cni -- [--rounds=20] [--warmup=2] [--burst-sizes=1,10,20,40] [--bursts=3] [--no-write]
import { execFileSync, spawn } from 'node:child_process';
import { copyFileSync, chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { buildDelegateConf } from '../src/cni/delegate.js';
import { parseFlannelNetConf } from '../src/cni/netconf.js';
import { readSubnetEnvFile } from '../src/subnet/envfile.js';
import { createCluster, repoRoot, type Cluster } from '../testbed/cluster.js';
import { addNetns, delNetns, runId } from '../testbed/netns.js';
import type { DriverPlan, DriverResult, DriverVariant } from './cni-driver.js';
import { lineChart } from './svg-plot.js';

const arg = (name: string, fallback: string): string => process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? fallback;
const ROUNDS = Number(arg('rounds', '20'));
const WARMUP = Number(arg('warmup', '2'));
const BURST_SIZES = arg('burst-sizes', '1,10,20,40').split(',').map(Number);
const BURSTS = Number(arg('bursts', '3'));
const WRITE = !process.argv.includes('--no-write');
const CNI_BIN = '/usr/lib/cni';

function onPath(name: string): string | null {
  for (const dir of (process.env['PATH'] ?? '').split(delimiter)) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  return null;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const p90 = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.max(0, Math.ceil(xs.length * 0.9) - 1)] ?? NaN;
const fmt = (ms: number): string => (Number.isNaN(ms) ? '–' : ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(0)} ms`);

interface Variant extends DriverVariant {
  label: string;
  /** The plots' legend. */
  legend: string;
}

async function runDriver(nodeNs: string, plan: DriverPlan): Promise<DriverResult[]> {
  const tsx = join(repoRoot(), 'node_modules', '.bin', 'tsx');
  const driver = join(repoRoot(), 'bench', 'cni-driver.ts');
  return new Promise((resolve, reject) => {
    const child = spawn('ip', ['netns', 'exec', nodeNs, tsx, driver], { stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) return reject(new Error(`the driver exited ${code}`));
      resolve(JSON.parse(out.trim().split('\n').pop()!) as DriverResult[]);
    });
    child.stdin.end(JSON.stringify(plan));
  });
}

async function main(): Promise<void> {
  const root = repoRoot();
  const client = join(root, 'build', 'Release', 'flannel_cni');
  if (!existsSync(client) || !existsSync(join(root, 'dist', 'flannel-cni.mjs'))) throw new Error('build first: npm ci && npm run build (the client and dist/flannel-cni.mjs)');
  const cnitool = process.env['CNITOOL'] || onPath('cnitool');
  const upstream = process.env['FLANNEL_UPSTREAM_CNI'] || onPath('flannel-cni');
  const baseline = process.env['FLANNEL_BENCH_BASELINE'] || null;
  console.log(`driving the plugins with ${cnitool ? `cnitool (${cnitool})` : 'no cnitool on PATH: the conflist\'s plugins executed directly, as libcni does'}`);
  if (!upstream) console.log("upstream's Go plugin: MISSING (set FLANNEL_UPSTREAM_CNI or put flannel-cni on PATH; building-anchors.md says how to build it): its row is left out");
  else console.log(`upstream's Go plugin: ${upstream}`);

  const id = runId();
  const dir = mkdtempSync(join(tmpdir(), `flannel-bench-cni-${id}-`));
  let cluster: Cluster | null = null;
  const pods = Array.from({ length: Math.max(...BURST_SIZES, 1) }, (_, k) => `cnib-${id}-p${k}`);
  try {
    cluster = await createCluster({ nodes: 1, config: { Network: '198.19.0.0/16', Backend: { Type: 'host-gw' } }, podsPerNode: 0, daemonArgs: ['--iptables-forward-rules=false', '--log-level=info'] });
    const node = cluster.nodes[0]!;
    for (const p of pods) await addNetns(p);

    // A copy of the client with no tree around it: it cannot fall back, so its row is flanneld's alone.
    const daemonOnly = join(dir, 'daemon-only', 'build', 'Release', 'flannel_cni');
    mkdirSync(join(dir, 'daemon-only', 'build', 'Release'), { recursive: true });
    copyFileSync(client, daemonOnly);
    chmodSync(daemonOnly, 0o755);

    const flannelEntry = (name: string) => ({
      type: 'flannel',
      delegate: { hairpinMode: true, isDefaultGateway: true },
      subnetFile: node.subnetFile,
      dataDir: join(dir, name, 'flannel'),
      ipam: { dataDir: join(dir, name, 'ipam') },
    });
    const portmap = { type: 'portmap', capabilities: { portMappings: true } };
    const variant = (name: string, label: string, legend: string, plugin: string | null, env: Record<string, string>, servedByDaemon: boolean): Variant => {
      const bin = join(dir, name, 'bin');
      const confDir = join(dir, name, 'conf');
      mkdirSync(bin, { recursive: true });
      mkdirSync(confDir, { recursive: true });
      let plugins: Record<string, unknown>[];
      if (plugin) {
        symlinkSync(plugin, join(bin, 'flannel'));
        plugins = [flannelEntry(name), portmap];
      } else {
        // The floor: what flannel hands its delegate, straight in the conflist.
        const flannelConf = parseFlannelNetConf(JSON.stringify({ ...flannelEntry(name), name: 'cbr0', cniVersion: '1.0.0' }));
        const { name: _n, cniVersion: _v, ...delegate } = buildDelegateConf(flannelConf, readSubnetEnvFile(node.subnetFile));
        plugins = [delegate, portmap];
      }
      writeFileSync(join(confDir, 'cbr0.conflist'), JSON.stringify({ name: 'cbr0', cniVersion: '1.0.0', plugins }, null, 2));
      return { name, label, legend, confDir, cniPath: `${bin}:${CNI_BIN}`, env, servedByDaemon };
    };
    const absent = { FLANNEL_CNI_SOCKET: join(dir, 'no-flanneld-here.sock') };
    const variants: Variant[] = [
      variant('floor', '`bridge` + `host-local` alone (the floor)', 'floor: bridge alone', null, {}, false),
      ...(upstream ? [variant('upstream', "upstream's plugin (flannel-io/cni-plugin v1.1.0, Go)", "upstream's Go plugin", upstream, {}, false)] : []),
      variant('daemon', 'ours, served by flanneld (compiled client)', 'ours, served by flanneld', daemonOnly, { FLANNEL_CNI_SOCKET: node.cniSocket }, true),
      variant('script', 'ours, served by flanneld, through `bin/flannel`', 'ours, via bin/flannel', join(root, 'bin', 'flannel'), { FLANNEL_CNI_SOCKET: node.cniSocket }, true),
      variant('standalone', 'ours, standalone (client without flanneld → Node)', 'ours, standalone', client, absent, false),
      ...(baseline ? [variant('baseline', `baseline: ${process.env['FLANNEL_BENCH_BASELINE_LABEL'] || `\`${baseline}\``}`, 'baseline', baseline, absent, false)] : []),
    ];
    const plan: DriverPlan = { variants, pods, rounds: ROUNDS, warmup: WARMUP, burstSizes: BURST_SIZES, bursts: BURSTS, daemonPid: node.pid!, cnitool };
    const rss = (): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${node.pid!}/status`, 'utf8'))![1]) / 1024;
    const rssBefore = rss();
    const results = await runDriver(node.ns, plan);
    const rssAfter = rss();
    const rssLine = `flanneld's RSS: ${rssBefore.toFixed(1)} MiB before the first CNI request, ${rssAfter.toFixed(1)} MiB after serving them all.`;

    const burstOf = (r: DriverResult, size: number, key: 'addWallMs' | 'addCpuMs' | 'delWallMs') => median(r.bursts.filter((b) => b.size === size).map((b) => b[key]));
    const big = Math.max(...BURST_SIZES);
    const rows = variants.map((v, k) => {
      const r = results[k]!;
      return `| ${v.label} | ${fmt(median(r.addMs))} / ${fmt(p90(r.addMs))} | ${fmt(median(r.delMs))} / ${fmt(p90(r.delMs))} | ${fmt(r.addCpuMs)} | ${fmt(burstOf(r, big, 'addWallMs'))} | ${fmt(burstOf(r, big, 'addCpuMs'))} | ${fmt(burstOf(r, big, 'delWallMs'))} |`;
    });
    const header = [
      `| | ADD median / p90 | DEL median / p90 | CPU per ADD | ${big} ADDs at once: wall | ${big} ADDs at once: CPU | ${big} DELs at once: wall |`,
      '|---|---|---|---|---|---|---|',
    ];
    console.log(['', ...header, ...rows, '', rssLine].join('\n'));
    if (!WRITE) return;

    const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root }).toString().trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: root }).toString().trim() !== '';
    const date = new Date().toISOString().slice(0, 10);
    const palette = ['#7f7f7f', '#d62728', '#1f77b4', '#17becf', '#ff7f0e', '#8c564b'];
    const series = (key: 'addWallMs' | 'addCpuMs') => variants.map((v, k) => ({
      name: v.legend,
      points: BURST_SIZES.map((size) => ({ x: size, y: Math.round(burstOf(results[k]!, size, key)) })),
      color: palette[k % palette.length]!,
    }));
    const svg = lineChart({
      title: `Pods set up at once on one node: wall time (${date}, ${commit})`,
      xLabel: 'concurrent CNI ADDs (log scale)',
      yLabel: 'ms until the last ADD returned',
      series: series('addWallMs'),
    });
    const svgCpu = lineChart({
      title: `Pods set up at once on one node: CPU of the process tree (${date}, ${commit})`,
      xLabel: 'concurrent CNI ADDs (log scale)',
      yLabel: 'CPU ms (children, and flanneld where it serves)',
      series: series('addCpuMs'),
    });
    mkdirSync(join(root, 'docs', 'img'), { recursive: true });
    writeFileSync(join(root, 'docs', 'img', 'cni-burst.svg'), svg);
    writeFileSync(join(root, 'docs', 'img', 'cni-burst-cpu.svg'), svgCpu);
    const section = [
      '<!-- cni:begin (written by bench/cni.ts; edit the text around it, not inside) -->',
      `Measured ${date} at commit \`${commit}\`${dirty ? ' (with uncommitted changes)' : ''} (\`npm run bench:cni\`; 2 shared cores, load average ${loadavg()[0]!.toFixed(1)} at the start), ` +
        `driven by ${cnitool ? '`cnitool`' : 'the conflist\'s plugins executed directly (no `cnitool` on PATH)'}; ` +
        `${ROUNDS} ADD+DEL pairs per variant, bursts repeated ${BURSTS} times (medians).` +
        (upstream ? '' : " Upstream's Go plugin was not found: its row is missing."),
      '',
      ...header,
      ...rows,
      '',
      rssLine,
      '',
      '![wall time against pods at once](img/cni-burst.svg)',
      '![CPU against pods at once](img/cni-burst-cpu.svg)',
      '<!-- cni:end -->',
    ].join('\n');
    const page = join(root, 'docs', 'benchmarks.md');
    const text = readFileSync(page, 'utf8');
    const begin = text.indexOf('<!-- cni:begin');
    const end = text.indexOf('<!-- cni:end -->');
    if (begin < 0 || end < 0) throw new Error(`${page} has no cni markers`);
    writeFileSync(page, text.slice(0, begin) + section + text.slice(end + '<!-- cni:end -->'.length));
    console.log(`wrote docs/benchmarks.md and docs/img/cni-burst*.svg (${commit})`);
  } finally {
    for (const p of pods) await delNetns(p);
    await cluster?.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
