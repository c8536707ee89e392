/** Pictures of training runs, drawn by Vega-Lite and rendered to SVG headlessly (no canvas or browser needed). */
import fs from 'node:fs';
import { atomicWrite } from './safetensors';

export interface Series {
  name: string;
  points: { x: number; y: number }[];
}

// vega and vega-lite are ES modules; a real dynamic import keeps them loadable from this CommonJS build.
const importEsm = new Function('m', 'return import(m)') as (m: string) => Promise<any>;

/** A line chart of one or more series (for example train and validation loss against step), as SVG text. */
export async function lineChartSvg(
  series: Series[],
  opts: { title?: string; x?: string; y?: string; logY?: boolean; width?: number; height?: number } = {},
): Promise<string> {
  const [vega, vl] = await Promise.all([importEsm('vega'), importEsm('vega-lite')]);
  const values = series.flatMap((s) => s.points.filter((p) => Number.isFinite(p.y)).map((p) => ({ series: s.name, x: p.x, y: p.y })));
  const spec = vl.compile({
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: opts.title,
    width: opts.width ?? 560,
    height: opts.height ?? 300,
    background: 'white',
    data: { values },
    mark: { type: 'line', point: values.length < 60 },
    encoding: {
      x: { field: 'x', type: 'quantitative', title: opts.x ?? 'step' },
      y: { field: 'y', type: 'quantitative', title: opts.y ?? 'loss', scale: { type: opts.logY ? 'log' : 'linear', zero: false } },
      color: { field: 'series', type: 'nominal', title: null },
    },
  }).spec;
  const view = new vega.View(vega.parse(spec), { renderer: 'none' });
  const svg: string = await view.toSVG();
  view.finalize();
  return svg;
}

/** A bar chart with optional error bars: one bar per (group, category). */
export async function barChartSvg(
  rows: { group: string; category: string; value: number; error?: number }[],
  opts: { title?: string; y?: string; width?: number } = {},
): Promise<string> {
  const [vega, vl] = await Promise.all([importEsm('vega'), importEsm('vega-lite')]);
  const values = rows.map((r) => ({ ...r, lo: r.value - (r.error ?? 0), hi: r.value + (r.error ?? 0) }));
  const spec = vl.compile({
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: opts.title,
    background: 'white',
    data: { values },
    facet: { column: { field: 'group', type: 'nominal', title: null } },
    spec: {
      width: opts.width ?? 220,
      height: 260,
      layer: [
        {
          mark: 'bar',
          encoding: {
            x: { field: 'category', type: 'nominal', title: null, sort: null },
            y: { field: 'value', type: 'quantitative', title: opts.y ?? 'value' },
            color: { field: 'category', type: 'nominal', legend: null, sort: null },
          },
        },
        {
          mark: { type: 'rule' },
          encoding: {
            x: { field: 'category', type: 'nominal', sort: null },
            y: { field: 'lo', type: 'quantitative' },
            y2: { field: 'hi' },
          },
        },
      ],
    },
  }).spec;
  const view = new vega.View(vega.parse(spec), { renderer: 'none' });
  const svg: string = await view.toSVG();
  view.finalize();
  return svg;
}

export async function writeSvg(file: string, svg: string): Promise<void> {
  await atomicWrite(file, (tmp) => fs.writeFileSync(tmp, svg));
}

/** Reads a metrics.jsonl written during training into loss series (train loss, and validation loss when present). */
export function lossSeries(metricsFile: string): Series[] {
  const rows = fs
    .readFileSync(metricsFile, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l));
  const train = rows.filter((r) => typeof r.loss === 'number' && typeof r.step === 'number').map((r) => ({ x: r.step, y: r.loss }));
  const evals = rows.filter((r) => typeof r.evalLoss === 'number').map((r) => ({ x: r.step, y: r.evalLoss }));
  return [{ name: 'train loss', points: train }, ...(evals.length ? [{ name: 'validation loss', points: evals }] : [])];
}
