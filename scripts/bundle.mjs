// Bundles the compiled daemon (dist/daemon/main.js and everything it imports, node_modules
// included) into one file, dist/flanneld.mjs, which bin/flanneld runs. Why: loading one file
// instead of ~250 modules takes about 100 ms less CPU at start, and V8 keeps less module source
// and fewer module records (docs/memory.md has the figures). The standalone CNI plugin
// (dist/cni/main.js, ~13 modules) is bundled the same way into dist/flannel-cni.mjs, which
// bin/flannel runs: a Node started for every pod loads one file (about 30 ms less CPU per call).
//
// The bundle must behave as if every module were still at its own path: etcd3 reads its .proto
// files relative to __dirname, our code finds the native addons from import.meta.url
// (src/common/addon.ts). So each bundled file's __dirname, __filename and
// import.meta.url are rewritten to its original location, expressed relative to the bundle (the
// package can be installed anywhere, as long as dist/ and node_modules/ keep their places).
// Whitespace and syntax are minified; names are kept, so stack traces in logs stay readable.
//
// Run by `npm run build` after tsc.
import { build } from 'esbuild';
import { readFile } from 'node:fs/promises';
import { dirname, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const dist = resolve(root, 'dist');

/**
 * `new URL(<path of file relative to the bundle>, __bundleURL)`, as source text. Not import.meta
 * itself: esbuild would take a CommonJS file that mentions it for an ES module.
 */
function urlOf(file) {
  const rel = relative(dist, file).split('\\').join('/');
  return `new URL(${JSON.stringify(rel.startsWith('.') ? rel : `./${rel}`)}, __bundleURL)`;
}

const originalLocations = {
  name: 'original-locations',
  setup(b) {
    b.onLoad({ filter: /\.(c|m)?js$/ }, async (args) => {
      let text = await readFile(args.path, 'utf8');
      const uses = (word) => new RegExp(`\\b${word}\\b`).test(text);
      // An ES module that uses them declares them itself (Node defines them for CommonJS only).
      const declares = (word) => new RegExp(`\\b(const|let|var)\\s+${word}\\b`).test(text);
      const prelude = [];
      if (text.includes('import.meta.url')) text = text.replaceAll('import.meta.url', `${urlOf(args.path)}.href`);
      if ((uses('__filename') || uses('__dirname')) && !declares('__filename') && !declares('__dirname')) {
        prelude.push(`var __filename = __bundleFileURLToPath(${urlOf(args.path)});`);
        prelude.push('var __dirname = __bundleDirname(__filename);');
      }
      // A prelude line would shift a shebang or 'use strict' out of first place: put it after.
      const head = /^(#![^\n]*\n)?(\s*(['"])use strict\3;?)?/.exec(text)[0];
      return { contents: `${head}\n${prelude.join(' ')}\n${text.slice(head.length)}`, loader: 'js' };
    });
  },
};

const bundles = [
  ['daemon/main.js', 'flanneld.mjs'],
  ['cni/main.js', 'flannel-cni.mjs'],
];
for (const [entry, out] of bundles) await build({
  entryPoints: [resolve(dist, entry)],
  outfile: resolve(dist, out),
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  minifyWhitespace: true,
  minifySyntax: true,
  legalComments: 'none',
  logLevel: 'warning',
  external: ['*.node'],
  // Paths as the package sees them: node_modules may be a symbolic link (a copy being packed).
  preserveSymlinks: true,
  plugins: [originalLocations],
  // What bundled CommonJS needs at run time: a require() for node built-ins and for the modules
  // some packages load dynamically (protobufjs finds `long` so), resolved from the bundle's place.
  banner: {
    js: [
      "import { createRequire as __bundleCreateRequire } from 'node:module';",
      "import { fileURLToPath as __bundleFileURLToPath } from 'node:url';",
      "import { dirname as __bundleDirname } from 'node:path';",
      'const __bundleURL = import.meta.url;',
      'const require = __bundleCreateRequire(import.meta.url);',
    ].join(' '),
  },
});
