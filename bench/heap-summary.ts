// Reads a V8 .heapsnapshot and says what the heap holds: self size by (node type, constructor or
// string), and for the biggest groups who retains them (a three-step retainer path, e.g.
// `Map.table <- VxlanBackend.peers <- ...`), so a growth between two snapshots can be named.
// Run alone: npx tsx bench/heap-summary.ts FILE [--top=N] [--diff=OTHER_FILE]
import { readFileSync } from 'node:fs';

interface RawSnapshot {
  snapshot: {
    meta: { node_fields: string[]; node_types: [string[], ...unknown[]]; edge_fields: string[]; edge_types: [string[], ...unknown[]] };
    node_count: number;
    edge_count: number;
  };
  nodes: number[];
  edges: number[];
  strings: string[];
}

export interface HeapGroup {
  /** e.g. "object Lease", "string", "closure sync", "code". */
  group: string;
  count: number;
  bytes: number;
  /** Top retainer paths of this group, with bytes. */
  retainers: { path: string; bytes: number; count: number }[];
}

export interface HeapSummary {
  totalBytes: number;
  nodeCount: number;
  groups: HeapGroup[];
  /** Every group's bytes (not only the top ones), for differences between snapshots. */
  bytesByGroup: Record<string, number>;
}

export function summarizeHeapSnapshot(file: string, top = 20): HeapSummary {
  const snap = JSON.parse(readFileSync(file, 'utf8')) as RawSnapshot;
  const { meta } = snap.snapshot;
  const nf = meta.node_fields.length;
  const ef = meta.edge_fields.length;
  const nType = meta.node_fields.indexOf('type');
  const nName = meta.node_fields.indexOf('name');
  const nSize = meta.node_fields.indexOf('self_size');
  const nEdges = meta.node_fields.indexOf('edge_count');
  const eType = meta.edge_fields.indexOf('type');
  const eName = meta.edge_fields.indexOf('name_or_index');
  const eTo = meta.edge_fields.indexOf('to_node');
  const nodeTypes = meta.node_types[0];
  const edgeTypes = meta.edge_types[0];
  const { nodes, edges, strings } = snap;
  const count = nodes.length / nf;

  const typeOf = (i: number) => nodeTypes[nodes[i * nf + nType]!]!;
  const nameOf = (i: number) => strings[nodes[i * nf + nName]!]!;
  const groupOf = (i: number): string => {
    const t = typeOf(i);
    // Strings and numbers are grouped by type only: their "name" is their content.
    if (t === 'string' || t === 'concatenated string' || t === 'sliced string' || t === 'number' || t === 'bigint') return t;
    if (t === 'code' || t === 'hidden' || t === 'array') return `${t} ${nameOf(i).slice(0, 40)}`;
    return `${t} ${nameOf(i).slice(0, 60)}`;
  };

  // First strong retainer of every node, and the edge's name, for retainer paths.
  const retainer = new Int32Array(count).fill(-1);
  const retainerEdge = new Int32Array(count).fill(-1);
  let edgeIndex = 0;
  for (let i = 0; i < count; i++) {
    const n = nodes[i * nf + nEdges]!;
    const fromType = typeOf(i);
    for (let k = 0; k < n; k++, edgeIndex++) {
      const e = edgeIndex * ef;
      const type = edgeTypes[edges[e + eType]!]!;
      if (type === 'weak' || type === 'shortcut') continue;
      const to = edges[e + eTo]! / nf;
      // Prefer a real object over V8's synthetic roots as the named owner.
      if (retainer[to] === -1 || (fromType !== 'synthetic' && typeOf(retainer[to]!) === 'synthetic')) {
        retainer[to] = i;
        retainerEdge[to] = e;
      }
    }
  }
  const edgeLabel = (e: number): string => {
    const type = edgeTypes[edges[e + eType]!]!;
    const v = edges[e + eName]!;
    if (type === 'element' || type === 'hidden') return `[${type}]`;
    const name = String(strings[v]);
    return /^\d+$/.test(name) ? '[n]' : name; // hash-table slots: one label for all
  };
  const pathOf = (i: number, steps = 3): string => {
    const parts: string[] = [];
    let at = i;
    for (let s = 0; s < steps; s++) {
      const r = retainer[at]!;
      if (r === -1) break;
      parts.push(`${nameOf(r).slice(0, 40) || typeOf(r)}.${edgeLabel(retainerEdge[at]!)}`);
      at = r;
    }
    return parts.join(' <- ');
  };

  const groups = new Map<string, { count: number; bytes: number; members: number[] }>();
  let totalBytes = 0;
  for (let i = 0; i < count; i++) {
    const size = nodes[i * nf + nSize]!;
    totalBytes += size;
    const g = groupOf(i);
    let entry = groups.get(g);
    if (!entry) groups.set(g, (entry = { count: 0, bytes: 0, members: [] }));
    entry.count++;
    entry.bytes += size;
    entry.members.push(i);
  }
  const sorted = [...groups.entries()].sort((a, b) => b[1].bytes - a[1].bytes).slice(0, top);
  return {
    totalBytes,
    nodeCount: count,
    bytesByGroup: Object.fromEntries([...groups.entries()].map(([g, v]) => [g, v.bytes])),
    groups: sorted.map(([group, g]) => {
      const byPath = new Map<string, { bytes: number; count: number }>();
      for (const i of g.members) {
        const p = pathOf(i);
        const entry = byPath.get(p) ?? { bytes: 0, count: 0 };
        entry.bytes += nodes[i * nf + nSize]!;
        entry.count++;
        byPath.set(p, entry);
      }
      const retainers = [...byPath.entries()].sort((a, b) => b[1].bytes - a[1].bytes).slice(0, 3).map(([path, v]) => ({ path, ...v }));
      return { group, count: g.count, bytes: g.bytes, retainers };
    }),
  };
}

export function formatHeapSummary(s: HeapSummary, other?: HeapSummary): string {
  const kb = (b: number) => (b / 1024).toFixed(0);
  const before = other?.bytesByGroup ?? {};
  const lines = [`heap snapshot: ${(s.totalBytes / 1048576).toFixed(1)} MB in ${s.nodeCount} nodes${other ? ` (other: ${(other.totalBytes / 1048576).toFixed(1)} MB)` : ''}`];
  lines.push(`| group | count | KiB | ${other ? 'Δ KiB vs other | ' : ''}top retainer paths (KiB) |`);
  lines.push(`|---|---|---|${other ? '---|' : ''}---|`);
  for (const g of s.groups) {
    const d = other ? `${kb(g.bytes - (before[g.group] ?? 0))} | ` : '';
    const r = g.retainers.map((x) => `${x.path.replace(/\|/g, '/')} (${kb(x.bytes)})`).join('; ');
    lines.push(`| ${g.group.replace(/\|/g, '/')} | ${g.count} | ${kb(g.bytes)} | ${d}${r} |`);
  }
  return lines.join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const file = process.argv[2];
  if (!file) {
    console.error('usage: npx tsx bench/heap-summary.ts FILE [--top=N] [--diff=OTHER]');
    process.exit(2);
  }
  const top = Number(process.argv.find((a) => a.startsWith('--top='))?.slice(6) ?? 20);
  const diff = process.argv.find((a) => a.startsWith('--diff='))?.slice(7);
  console.log(formatHeapSummary(summarizeHeapSnapshot(file, top), diff ? summarizeHeapSnapshot(diff, 1) : undefined));
}
