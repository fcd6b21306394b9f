// The flag table parser flanneld reads its flags with (src/common/flag-table.ts): Go's flag
// conventions on top of node:util parseArgs.
import { describe, expect, it } from 'vitest';
import { type FlagTable, FlagTableError, formatFlagHelp, parseFlagTable } from '../src/common/flag-table.js';

const TABLE: FlagTable = {
  name: { type: 'string', default: 'x', describe: 'a name' },
  count: { type: 'number', default: 3 },
  on: { type: 'boolean', default: false },
  item: { type: 'list', default: [] },
  mode: { type: 'string', choices: ['a', 'b'] },
  v: { type: 'number' },
  legacy: { type: 'string', bare: true, hidden: true },
};

const values = (argv: string[]) => {
  const r = parseFlagTable(TABLE, argv);
  if (r.kind !== 'flags') throw new Error(r.kind);
  return r.values;
};

describe('flag table', () => {
  it('fills defaults, keeps the last value of a repeated flag and every value of a list', () => {
    expect(values([])).toEqual({ name: 'x', count: 3, on: false, item: [] });
    expect(values(['--name=a', '--name', 'b', '--item', 'i1', '--item=i2', '--count=7', '--count', '8'])).toMatchObject({ name: 'b', item: ['i1', 'i2'], count: 8 });
  });

  it("reads booleans as Go's strconv.ParseBool does, bare meaning true", () => {
    expect(values(['--on']).on).toBe(true);
    for (const t of ['1', 't', 'T', 'true', 'TRUE', 'True']) expect(values([`--on=${t}`]).on, t).toBe(true);
    for (const f of ['0', 'f', 'F', 'false', 'FALSE', 'False']) expect(values(['--on', `--on=${f}`]).on, f).toBe(false);
    expect(() => values(['--on=maybe'])).toThrow(/--on: "maybe" is not a boolean/);
  });

  it('takes the next argument as a string value even when it starts with a dash, as Go does', () => {
    expect(values(['--name', '--on']).name).toBe('--on');
    expect(values(['--name=']).name).toBe('');
  });

  it('reads a one-letter flag given as -v, -v=N and --v N', () => {
    expect(values(['-v', '2']).v).toBe(2);
    expect(values(['-v=4']).v).toBe(4);
    expect(values(['--v', '5']).v).toBe(5);
  });

  it('refuses unknown flags and positional arguments together, bad numbers, missing values and values outside the choices', () => {
    expect(() => values(['stray', '--bogus', '--name=a'])).toThrow(new FlagTableError('Unknown arguments: stray, bogus'));
    expect(() => values(['--bogus'])).toThrow(/^Unknown argument: bogus$/);
    expect(() => values(['--count=abc'])).toThrow(/--count must be a number, not "abc"/);
    expect(() => values(['--count='])).toThrow(/--count must be a number/);
    expect(() => values(['--name'])).toThrow(/--name needs a value/);
    expect(() => values(['--item'])).toThrow(/--item needs a value/);
    expect(() => values(['--mode=c'])).toThrow(/--mode must be one of a, b, not "c"/);
    expect(values(['--mode=b']).mode).toBe('b');
  });

  it('lets a bare switch-like string flag read "true"', () => {
    expect(values(['--legacy']).legacy).toBe('true');
    expect(values(['--legacy=false']).legacy).toBe('false');
  });

  it('answers --help and --version; what follows -- is an argument, refused', () => {
    expect(parseFlagTable(TABLE, ['--name=a', '--help'])).toEqual({ kind: 'help' });
    expect(parseFlagTable(TABLE, ['--version'])).toEqual({ kind: 'version' });
    expect(() => values(['--', 'x'])).toThrow(/Unknown argument: x/);
  });

  it('lists visible flags with their type and default in the help', () => {
    const help = formatFlagHelp('Usage: t', TABLE);
    expect(help).toMatch(/^Usage: t\n\nOptions:\n/);
    expect(help).toMatch(/--name\s+a name \[string\] \[default: "x"\]/);
    expect(help).toMatch(/--mode\s+\[string\] \[a, b\]/);
    expect(help).toContain('--help');
    expect(help).not.toContain('--legacy');
  });
});
