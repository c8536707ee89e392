/** Progress bars and metrics files for long work (training, evaluation, embedding). */
import fs from 'node:fs';
import path from 'node:path';
import cliProgress from 'cli-progress';
import type { Progress } from './trainer';

export interface ProgressBar {
  update(done: number, fields?: Record<string, string | number>): void;
  stop(): void;
}

/**
 * A bar showing step/total, loss, tokens/s and ETA. On a terminal it redraws in place; in a log file (no TTY) it
 * writes a line every few seconds instead, so background runs still report.
 */
export function progressBar(total: number, label: string, opts: { stream?: NodeJS.WriteStream; silent?: boolean } = {}): ProgressBar {
  if (opts.silent) return { update() {}, stop() {} };
  const stream = opts.stream ?? process.stderr;
  const bar = new cliProgress.SingleBar(
    {
      format: `${label} [{bar}] {value}/{total} | {info} | ETA {eta_formatted}`,
      barsize: 24,
      hideCursor: stream.isTTY,
      stream,
      etaBuffer: 50,
      fps: 5,
      noTTYOutput: true,
      notTTYSchedule: 5000,
    },
    cliProgress.Presets.shades_classic,
  );
  bar.start(total, 0, { info: '' });
  return {
    update(done, fields = {}) {
      const info = Object.entries(fields)
        .map(([k, v]) => `${k} ${v}`)
        .join(' | ');
      bar.update(done, { info });
    },
    stop() {
      bar.stop();
    },
  };
}

/** The Trainer's onProgress as a bar line. */
export function trainingFields(p: Progress): Record<string, string | number> {
  const f: Record<string, string | number> = { loss: p.loss.toFixed(4), lr: p.lr.toExponential(2), 'tok/s': Math.round(p.tokensPerSecond) };
  if (p.evalLoss !== undefined) f['val loss'] = p.evalLoss.toFixed(4);
  if (p.evalAccuracy !== undefined) f['val acc'] = p.evalAccuracy.toFixed(3);
  return f;
}

/** Appends one JSON object per line; each line is written whole, so a killed run leaves a readable file. */
export class MetricsWriter {
  readonly file: string;
  private replaceOnFirstWrite: boolean;
  /**
   * `append` keeps what the file holds; `resume` keeps it too, but the first row written drops the rows from its
   * step on: a resumed run rewrites what followed its checkpoint.
   */
  constructor(file: string, opts: { append?: boolean; resume?: boolean } = {}) {
    this.file = file;
    this.replaceOnFirstWrite = Boolean(opts.resume);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    if (!opts.append && !opts.resume) fs.writeFileSync(file, '');
  }
  private dropFrom(step: number): void {
    if (!fs.existsSync(this.file)) return;
    const keep = fs
      .readFileSync(this.file, 'utf8')
      .split('\n')
      .filter((line) => line.trim() !== '' && !(JSON.parse(line).step >= step));
    fs.writeFileSync(this.file, keep.map((l) => l + '\n').join(''));
  }
  write(row: Record<string, unknown>): void {
    if (this.replaceOnFirstWrite && typeof row.step === 'number') this.dropFrom(row.step);
    this.replaceOnFirstWrite = false;
    fs.appendFileSync(this.file, JSON.stringify(row) + '\n');
    // A run started by `tunekit serve` reports each row to the server as it is written (the file is rewritten on resume,
    // so the server does not follow it).
    if (process.send && process.connected) process.send({ type: 'metrics', row });
  }
}
