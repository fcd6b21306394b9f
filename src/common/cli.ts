// Command-line conventions shared by flanneld and flannelctl: Go-style flags, as upstream's.

/** Go's flag package accepts `-flag`; parsers would read it as single-letter flags, so rewrite it. */
export function normalizeGoStyleFlags(argv: readonly string[]): string[] {
  return argv.map((a) => (/^-[a-z][a-z0-9-]+(=.*)?$/.test(a) ? `-${a}` : a));
}

// A flag given more than once keeps its last value, as with Go's flag package (yargs would make an array).
export const lastString = (v: string | string[]): string => (Array.isArray(v) ? v[v.length - 1]! : v);

/** True when `argv` sets `--name` (as `--name`, `--name=v`, `--no-name`), after normalizeGoStyleFlags. */
export function hasFlag(argv: readonly string[], name: string): boolean {
  return argv.some((a) => a === `--${name}` || a.startsWith(`--${name}=`) || a === `--no-${name}`);
}

/**
 * Upstream reads every flag from FLANNELD_<FLAG> (upper case, dashes as underscores) and ignores
 * variables that name no flag. Returns the known ones as `--flag=value` arguments for flags not on
 * the command line (so a flag wins over its variable), and the names of the unknown ones.
 */
export function flagsFromEnvironment(
  env: Readonly<Record<string, string | undefined>>,
  known: Iterable<string>,
  argv: readonly string[],
  prefix = 'FLANNELD_',
): { args: string[]; unknown: string[] } {
  const byVariable = new Map<string, string>();
  for (const flag of known) byVariable.set(prefix + flag.toUpperCase().replace(/-/g, '_'), flag);
  const args: string[] = [];
  const unknown: string[] = [];
  for (const [name, value] of Object.entries(env)) {
    // An empty variable (FLANNELD_PUBLIC_IP= in an env file) leaves the flag at its default.
    if (!name.startsWith(prefix) || value === undefined || value === '') continue;
    const flag = byVariable.get(name);
    if (flag === undefined) unknown.push(name);
    else if (!hasFlag(argv, flag)) args.push(`--${flag}=${value}`);
  }
  return { args, unknown: unknown.sort() };
}
