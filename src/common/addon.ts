// Our native addons, where node-gyp builds them: <package root>/build/Release. This file sits two
// levels below the package root in src/ (tests) and in dist/ (flannelctl; the daemon's bundle keeps
// each file's own import.meta.url), so one relative path serves all.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** The file of addon `name` (a binding.gyp target, e.g. "flannel_netlink"). */
export function addonPath(name: string): string {
  return fileURLToPath(new URL(`../../build/Release/${name}.node`, import.meta.url));
}

/** Loads addon `name`; null where it was not built. */
export function loadBuiltAddon<T>(name: string): T | null {
  const path = addonPath(name);
  return existsSync(path) ? (createRequire(import.meta.url)(path) as T) : null;
}
