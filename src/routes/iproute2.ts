// The iproute2 path (path.ts), for where the rtnetlink addon is not built: FDB lines in one
// `bridge -force -batch`, route and neighbour lines in one `ip -force -batch`, each line built from
// checked words (words.ts) so that no lease data can change how iproute2 splits it; `-force` carries
// on past a refused line and names it ("Command failed -:N"), which attributes the kernel's message to
// its entry. Reads are the text dumps (`ip route show root`, `ip neigh show dev`, `bridge fdb show
// dev`), with a SHA-1 of each text as digest: only the texts that changed are parsed again.
import { createHash } from 'node:crypto';
import { type KernelEntry, type KernelOp, netFamily } from './entries.js';
import { fdbArgs, fdbDeleteCommand, fdbSetCommand, parseFdbLine } from './fdb.js';
import { forceBatch, IpCommandError, parseLines, toolBytes, type BatchOutcome, type IpOptions } from './ip.js';
import { neighboursArgs, neighDeleteCommand, neighSetCommand, parseNeighLine } from './neigh.js';
import type { DumpScope, KernelDump, KernelPath } from './path.js';
import { parseRouteLine, routeDeleteCommand, routeSetCommand, routesWithinArgs } from './route.js';

/** The batch line of an op; throws BatchWordError when a value is not canonical. */
export function opCommand(op: KernelOp): string[] {
  const e = op.entry;
  const del = op.action === 'delete';
  switch (e.kind) {
    case 'route':
      return del ? routeDeleteCommand(e) : routeSetCommand(e);
    case 'neigh':
      return del ? neighDeleteCommand(e) : neighSetCommand(e);
    case 'fdb':
      return del ? fdbDeleteCommand(e) : fdbSetCommand(e);
    default:
      throw new Error(`a ${e.kind} entry is not written through iproute2`);
  }
}

/**
 * What of a dump's text the parsers read: the kernel's own NOARP neighbours (the IPv6 multicast groups a
 * device joins as its addresses come up) are left out, and the states a dynamic neighbour or FDB entry
 * passes through as it ages are one word, since only "permanent or not" is read. Neither may change the
 * digest, or a pass over an unchanged kernel could never be skipped.
 */
function digestedText(text: Buffer): string {
  return text
    .toString('latin1')
    .split('\n')
    .filter((line) => !/\bNOARP\b/.test(line))
    .join('\n')
    .replace(/\b(REACHABLE|STALE|DELAY|PROBE|FAILED|INCOMPLETE)\b/g, 'DYNAMIC');
}

export class Iproute2Path implements KernelPath {
  readonly name = 'iproute2';
  private readonly opts: IpOptions;
  /** Each text dump's digest and entries as last parsed: a dump whose text has not changed is not parsed again. */
  private held = new Map<string, { digest: string; entries: KernelEntry[] }>();

  constructor(netns?: string) {
    this.opts = netns ? { netns } : {};
  }

  async apply(ops: readonly KernelOp[]): Promise<(string | null)[]> {
    const verdicts: (string | null)[] = ops.map(() => null);
    const groups = { bridge: [] as number[], ip: [] as number[] };
    const lines: string[][] = [];
    ops.forEach((op, i) => {
      try {
        lines[i] = opCommand(op);
        groups[op.entry.kind === 'fdb' ? 'bridge' : 'ip'].push(i);
      } catch (err) {
        verdicts[i] = (err as Error).message; // never sent: a word that could break the batch
      }
    });
    // FDB first: the plan's order puts FDB changes before routes and neighbours.
    for (const tool of ['bridge', 'ip'] as const) {
      const group = groups[tool];
      if (group.length === 0) continue;
      let outcome: BatchOutcome;
      try {
        outcome = await forceBatch(tool, group.map((i) => lines[i]!), this.opts);
      } catch (err) {
        const message = err instanceof IpCommandError && err.timedOut ? `${tool} -batch did not finish in time` : `${tool} -batch failed: ${(err as Error).message}`;
        for (const i of group) verdicts[i] = message;
        continue;
      }
      group.forEach((opIndex, line) => {
        const refused = outcome.failed.get(line) ?? (outcome.unknownFrom >= 0 && line >= outcome.unknownFrom ? 'not applied: the batch stopped early' : null);
        if (refused !== null) verdicts[opIndex] = refused;
      });
    }
    return verdicts;
  }

  async dump(scope: DumpScope, skipDigest: string): Promise<KernelDump> {
    const reads: { tool: 'ip' | 'bridge'; args: string[]; parse: (line: string) => KernelEntry | null }[] = [
      ...scope.routeRoots.map((root) => ({ tool: 'ip' as const, args: routesWithinArgs(root), parse: (l: string) => parseRouteLine(l, netFamily(root)) })),
      ...scope.devices.flatMap((dev) => [
        { tool: 'ip' as const, args: neighboursArgs(dev), parse: (l: string) => parseNeighLine(l, dev) },
        { tool: 'bridge' as const, args: fdbArgs(dev), parse: (l: string) => parseFdbLine(l, dev) },
      ]),
    ];
    const texts = await Promise.all(reads.map((r) => this.read(r.tool, r.args)));
    const digests = texts.map((t) => createHash('sha1').update(digestedText(t)).digest('hex'));
    const digest = createHash('sha1').update(digests.join(' ')).digest('hex');
    if (digest === skipDigest) return { digest };
    const held = new Map<string, { digest: string; entries: KernelEntry[] }>();
    const entries: KernelEntry[] = [];
    for (const [i, r] of reads.entries()) {
      const key = `${r.tool} ${r.args.join(' ')}`;
      const before = this.held.get(key);
      const parsed = before?.digest === digests[i] ? before.entries : await parseLines(texts[i]!.toString(), r.parse);
      held.set(key, { digest: digests[i]!, entries: parsed });
      entries.push(...parsed);
    }
    this.held = held;
    return { digest, entries };
  }

  /** A dump's text; a device that does not exist (being recreated) holds nothing. */
  private async read(tool: 'ip' | 'bridge', args: string[]): Promise<Buffer> {
    try {
      return await toolBytes(tool, args, this.opts);
    } catch (err) {
      if (err instanceof IpCommandError && /does not exist|Cannot find device/.test(err.stderr)) return Buffer.alloc(0);
      throw err;
    }
  }

  close(): void {}
}
