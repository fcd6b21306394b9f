// Command-line conventions shared by flanneld and flannelctl: Go-style flags, as upstream's.

/** Go's flag package accepts `-flag`; yargs would read it as single-letter flags, so rewrite it. */
export function normalizeGoStyleFlags(argv: readonly string[]): string[] {
  return argv.map((a) => (/^-[a-z][a-z0-9-]+(=.*)?$/.test(a) ? `-${a}` : a));
}

// A flag given more than once keeps its last value, as with Go's flag package (yargs would make an array).
export const lastString = (v: string | string[]): string => (Array.isArray(v) ? v[v.length - 1]! : v);
export const lastNumber = (v: number | number[]): number => (Array.isArray(v) ? v[v.length - 1]! : v);
export const lastBoolean = (v: boolean | boolean[]): boolean => (Array.isArray(v) ? v[v.length - 1]! : v);
