// A tiny line-chart writer for bench figures: log-scale (or linear) x, linear y, one polyline per series, a
// legend. Produces a standalone SVG string; no dependencies.

export interface Series {
  name: string;
  points: readonly { x: number; y: number }[];
  /** Stroke colour; a default palette is used when absent. */
  color?: string;
  dashed?: boolean;
}

export interface Chart {
  title: string;
  xLabel: string;
  yLabel: string;
  series: readonly Series[];
  /** Horizontal reference lines (goals), drawn dotted. */
  marks?: readonly { y: number; label: string }[];
  /** The x axis: logarithmic (sizes spanning decades, the default) or linear (rounds 1, 2, 3...). */
  xScale?: 'log' | 'linear';
}

const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#17becf', '#7f7f7f'];

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** A "nice" upper bound for the y axis and its tick step. */
function niceScale(max: number): { top: number; step: number } {
  const raw = Math.max(max, 1e-9) / 5;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw)!;
  return { top: Math.ceil(max / step) * step, step };
}

export function lineChart(chart: Chart, width = 720, height = 420): string {
  const m = { left: 70, right: 230, top: 40, bottom: 55 };
  const w = width - m.left - m.right;
  const h = height - m.top - m.bottom;
  const xs = chart.series.flatMap((s) => s.points.map((p) => p.x));
  const ys = [...chart.series.flatMap((s) => s.points.map((p) => p.y)), ...(chart.marks ?? []).map((k) => k.y)];
  const [xMin, xMax] = [Math.min(...xs), Math.max(...xs)];
  const { top, step } = niceScale(Math.max(...ys));
  const scale = chart.xScale === 'linear' ? (x: number): number => x : Math.log10;
  const lx = (x: number): number => m.left + (xMax === xMin ? w / 2 : ((scale(x) - scale(xMin)) / (scale(xMax) - scale(xMin))) * w);
  const ly = (y: number): number => m.top + h - (y / top) * h;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${width}" height="${height}" fill="white"/>`);
  out.push(`<text x="${m.left + w / 2}" y="22" text-anchor="middle" font-size="15">${esc(chart.title)}</text>`);
  for (let y = 0; y <= top + step / 2; y += step) {
    out.push(`<line x1="${m.left}" x2="${m.left + w}" y1="${ly(y)}" y2="${ly(y)}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${m.left - 8}" y="${ly(y) + 4}" text-anchor="end">${+y.toPrecision(6)}</text>`);
  }
  for (const x of [...new Set(xs)].sort((a, b) => a - b)) {
    out.push(`<line x1="${lx(x)}" x2="${lx(x)}" y1="${m.top}" y2="${m.top + h}" stroke="#f0f0f0"/>`);
    out.push(`<text x="${lx(x)}" y="${m.top + h + 18}" text-anchor="middle">${x.toLocaleString('en-US')}</text>`);
  }
  out.push(`<rect x="${m.left}" y="${m.top}" width="${w}" height="${h}" fill="none" stroke="#333"/>`);
  out.push(`<text x="${m.left + w / 2}" y="${height - 12}" text-anchor="middle">${esc(chart.xLabel)}</text>`);
  out.push(`<text transform="translate(18 ${m.top + h / 2}) rotate(-90)" text-anchor="middle">${esc(chart.yLabel)}</text>`);
  for (const mark of chart.marks ?? []) {
    out.push(`<line x1="${m.left}" x2="${m.left + w}" y1="${ly(mark.y)}" y2="${ly(mark.y)}" stroke="#999" stroke-dasharray="2 4"/>`);
    out.push(`<text x="${m.left + 4}" y="${ly(mark.y) - 4}" fill="#666">${esc(mark.label)}</text>`);
  }
  chart.series.forEach((s, i) => {
    const color = s.color ?? PALETTE[i % PALETTE.length]!;
    const pts = [...s.points].sort((a, b) => a.x - b.x);
    out.push(`<polyline fill="none" stroke="${color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ''} points="${pts.map((p) => `${lx(p.x).toFixed(1)},${ly(p.y).toFixed(1)}`).join(' ')}"/>`);
    for (const p of pts) out.push(`<circle cx="${lx(p.x).toFixed(1)}" cy="${ly(p.y).toFixed(1)}" r="3" fill="${color}"><title>${esc(s.name)}: ${p.y}</title></circle>`);
    const ly0 = m.top + 10 + i * 20;
    out.push(`<line x1="${m.left + w + 15}" x2="${m.left + w + 40}" y1="${ly0}" y2="${ly0}" stroke="${color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`);
    out.push(`<text x="${m.left + w + 46}" y="${ly0 + 4}">${esc(s.name)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}
