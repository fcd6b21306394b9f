// Flags declared as data and parsed with node:util's parseArgs, the way Go's flag package reads them:
// `--name=value`, `--name value`, `-name` (after normalizeGoStyleFlags), a bare boolean, a repeated
// flag keeping its last value (lists collect every one), no positional arguments.
// The daemon parses its flags with this rather than yargs: it parses them once, and yargs' code and
// data stayed in its memory for good (about 3.7 MB of a 60 MB budget, docs/memory.md).
import { parseArgs } from 'node:util';

export interface FlagSpec {
  /** `list`: repeatable, every value kept in order. */
  type: 'string' | 'number' | 'boolean' | 'list';
  default?: string | number | boolean | string[];
  describe?: string;
  choices?: readonly string[];
  /** Left out of --help (accepted for compatibility). */
  hidden?: boolean;
  /** A string flag that may be given bare, as a switch: it then reads "true". */
  bare?: boolean;
}

export type FlagTable = Readonly<Record<string, FlagSpec>>;
export type FlagValue = string | number | boolean | string[] | undefined;

export type FlagParse = { kind: 'help' } | { kind: 'version' } | { kind: 'flags'; values: Record<string, FlagValue> };

/** Thrown for a flag or value the table refuses; the message names it. */
export class FlagTableError extends Error {
  override name = 'FlagTableError';
}

/** Go's strconv.ParseBool. */
const BOOLEANS: Readonly<Record<string, boolean>> = { '1': true, t: true, T: true, true: true, TRUE: true, True: true, '0': false, f: false, F: false, false: false, FALSE: false, False: false };

/** Parses `argv` against `table`. --help and --version are answered here; defaults fill the rest. */
export function parseFlagTable(table: FlagTable, argv: readonly string[]): FlagParse {
  // A one-letter flag (klog's -v) arrives as -v or -v=N: read it as the long flag it is.
  const args = argv.map((a) => {
    const m = /^-([a-zA-Z])(=.*)?$/.exec(a);
    return m && table[m[1]!] ? `--${m[1]}${m[2] ?? ''}` : a;
  });
  const options: Record<string, { type: 'string' | 'boolean' }> = {};
  for (const [name, spec] of Object.entries(table)) options[name] = { type: spec.type === 'boolean' ? 'boolean' : 'string' };
  const { tokens } = parseArgs({ args, options, strict: false, allowPositionals: true, tokens: true });
  const values: Record<string, FlagValue> = {};
  const unknown: string[] = [];
  let afterTerminator = false;
  for (const token of tokens) {
    if (token.kind === 'option-terminator') {
      afterTerminator = true;
      continue;
    }
    if (token.kind === 'positional') {
      unknown.push(token.value);
      continue;
    }
    if (afterTerminator) continue;
    const { name } = token;
    const value = token.value ?? undefined;
    if (name === 'help') return { kind: 'help' };
    if (name === 'version') return { kind: 'version' };
    const spec = table[name];
    if (!spec) {
      unknown.push(name);
      continue;
    }
    values[name] = readValue(name, spec, value, values[name]);
  }
  if (unknown.length > 0) throw new FlagTableError(`Unknown argument${unknown.length > 1 ? 's' : ''}: ${unknown.join(', ')}`);
  for (const [name, spec] of Object.entries(table)) {
    if (values[name] === undefined && spec.default !== undefined) values[name] = Array.isArray(spec.default) ? [...spec.default] : spec.default;
  }
  return { kind: 'flags', values };
}

function readValue(name: string, spec: FlagSpec, value: string | undefined, before: FlagValue): FlagValue {
  switch (spec.type) {
    case 'boolean': {
      if (value === undefined) return true;
      const b = BOOLEANS[value];
      if (b === undefined) throw new FlagTableError(`--${name}: "${value}" is not a boolean (true or false)`);
      return b;
    }
    case 'list':
      if (value === undefined) throw new FlagTableError(`--${name} needs a value`);
      return [...((before as string[] | undefined) ?? []), value];
    case 'number': {
      const n = value === undefined || value.trim() === '' ? NaN : Number(value);
      if (Number.isNaN(n)) throw new FlagTableError(`--${name} must be a number${value === undefined ? '' : `, not "${value}"`}`);
      return n;
    }
    case 'string':
      if (value === undefined) {
        if (spec.bare) return 'true';
        throw new FlagTableError(`--${name} needs a value`);
      }
      if (spec.choices && !spec.choices.includes(value)) throw new FlagTableError(`--${name} must be one of ${spec.choices.join(', ')}, not "${value}"`);
      return value;
  }
}

/** The --help text: one entry per visible flag, its type, default and description. */
export function formatFlagHelp(usage: string, table: FlagTable): string {
  const rows = Object.entries(table)
    .filter(([, spec]) => !spec.hidden)
    .map(([name, spec]) => {
      const notes = [spec.type === 'list' ? '[repeatable]' : `[${spec.type}]`];
      if (spec.choices) notes.push(`[${spec.choices.join(', ')}]`);
      const d = spec.default;
      if (d !== undefined && !(Array.isArray(d) && d.length === 0)) notes.push(`[default: ${JSON.stringify(d)}]`);
      return [`--${name}`, `${spec.describe ?? ''} ${notes.join(' ')}`.trim()] as const;
    });
  rows.push(['--help', 'show this help'], ['--version', 'show the version']);
  const width = Math.max(...rows.map(([flag]) => flag.length)) + 2;
  return [usage, '', 'Options:', ...rows.map(([flag, text]) => `  ${flag.padEnd(width)}${text}`)].join('\n') + '\n';
}
