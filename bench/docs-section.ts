// Where benches write their figures: a section of docs/benchmarks.md between a bench's markers
// (`<!-- NAME:begin ... -->` … `<!-- NAME:end -->`), with the date and commit they were measured at,
// and an SVG plot in docs/img/.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '../testbed/repo.js';

/** Today's date (YYYY-MM-DD) and the short commit of the tree the bench runs. */
export function benchStamp(): { date: string; commit: string } {
  const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: repoRoot() }).toString().trim();
  return { date: new Date().toISOString().slice(0, 10), commit };
}

/** Writes docs/img/<file>. */
export function writeBenchImage(file: string, svg: string): void {
  const dir = join(repoRoot(), 'docs', 'img');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, file), svg);
}

/** Replaces the section between `name`'s markers in docs/benchmarks.md with `lines` (markers included). */
export function writeBenchSection(name: string, bench: string, lines: readonly string[]): void {
  const page = join(repoRoot(), 'docs', 'benchmarks.md');
  const text = readFileSync(page, 'utf8');
  const endMark = `<!-- ${name}:end -->`;
  const begin = text.indexOf(`<!-- ${name}:begin`);
  const end = text.indexOf(endMark);
  if (begin < 0 || end < 0) throw new Error(`${page} has no ${name} markers`);
  const section = [`<!-- ${name}:begin (written by ${bench}; edit the text around it, not inside) -->`, ...lines, endMark].join('\n');
  writeFileSync(page, text.slice(0, begin) + section + text.slice(end + endMark.length));
}
