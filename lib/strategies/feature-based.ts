/**
 * The feature-based approach: embed every example with the frozen model, then fit a logistic regression on the
 * embeddings. Nothing in the model trains. Embeddings can be cached on disk, keyed by the weights and the inputs.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { collateExamples, Example } from '../trainer';
import { LogisticRegression, LogisticRegressionOptions } from '../logreg';
import type { Model, Pooling, Precision } from '../model';
import { atomicWrite } from '../safetensors';
import { TunekitError } from '../errors';
import { checkOptions } from '../validate';
import { peakRssMiB, StrategyData, StrategyResult } from './common';

export interface FeatureBasedOptions extends LogisticRegressionOptions {
  /** How a sequence becomes one vector (default: the family's, lib/families.ts: cls for encoders, last for decoders). */
  pooling?: Pooling;
  batchSize?: number;
  /** Sets the model's precision for embedding (Model.setPrecision); default: the precision it has. */
  precision?: Precision;
  /** Folder to keep embeddings in, so a second run on the same model and data skips the model. */
  cacheDir?: string;
  onProgress?: (done: number, total: number) => void;
}

export class FeatureBased {
  readonly name = 'features';
  readonly classifier: LogisticRegression;
  constructor(readonly options: FeatureBasedOptions = {}) {
    const { C, maxIter, tol } = checkOptions(
      options,
      ['C', 'maxIter', 'tol', 'pooling', 'batchSize', 'precision', 'cacheDir', 'onProgress'],
      'FeatureBased',
    );
    this.classifier = new LogisticRegression({ C, maxIter, tol });
  }

  /** [n, hidden] embeddings of the examples with the frozen model, in eval mode. */
  async embed(model: Model, examples: Example[]): Promise<{ data: Float32Array; dim: number }> {
    if (!Array.isArray(examples) || examples.length === 0) throw new TunekitError('E_ARG', 'features: no examples to embed');
    const pooling = this.options.pooling ?? model.family.pooling;
    if (this.options.precision !== undefined) await model.setPrecision(this.options.precision);
    await model.eval();
    const key = this.options.cacheDir ? await cacheKey(model, examples, pooling) : undefined;
    const file = key ? path.join(this.options.cacheDir!, `${key}.f32`) : undefined;
    if (file && fs.existsSync(file)) {
      const buf = fs.readFileSync(file);
      const dim = buf.length / 4 / examples.length;
      if (Number.isInteger(dim) && dim > 0) return { data: new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4).slice(), dim };
    }
    const bs = this.options.batchSize ?? 32;
    const parts: Float32Array[] = [];
    let dim = 0;
    for (let i = 0; i < examples.length; i += bs) {
      const batch = collateExamples(
        model,
        examples.slice(i, i + bs).map((e) => ({ inputIds: e.inputIds })),
      );
      const out = await model.embed(batch, { pooling });
      dim = out.shape[1];
      parts.push(out.data);
      this.options.onProgress?.(Math.min(examples.length, i + bs), examples.length);
    }
    const data = new Float32Array(examples.length * dim);
    let at = 0;
    for (const p of parts) {
      data.set(p, at);
      at += p.length;
    }
    if (file) {
      fs.mkdirSync(path.dirname(file), { recursive: true });
      await atomicWrite(file, (tmp) => fs.writeFileSync(tmp, Buffer.from(data.buffer, data.byteOffset, data.byteLength)));
    }
    return { data, dim };
  }

  async run(model: Model, data: StrategyData): Promise<StrategyResult> {
    if (!data || !Array.isArray(data.train) || data.train.length === 0)
      throw new TunekitError('E_ARG', 'features: data.train must be a non-empty array of examples');
    const labelsOf = (ex: Example[]) =>
      ex.map((e, i) => {
        if (typeof e.label !== 'number') throw new TunekitError('E_ARG', `features: example ${i} has no numeric label`);
        return e.label;
      });
    const start = Date.now();
    const train = await this.embed(model, data.train);
    const y = labelsOf(data.train);
    const classes = Math.max(2, model.task === 'sequence-classification' ? model.numLabels : 0, ...y.map((v) => v + 1));
    await this.classifier.fit(train.data, train.dim, y, classes);
    const score = async (ex?: Example[]) => {
      if (!ex?.length) return undefined;
      const f = await this.embed(model, ex);
      const yy = labelsOf(ex);
      const p = this.classifier.predictProba(f.data);
      let loss = 0;
      yy.forEach((c, i) => {
        loss -= Math.log(Math.max(1e-300, p[i * classes + c]));
      });
      return { loss: loss / yy.length, accuracy: this.classifier.accuracy(f.data, yy), examples: yy.length };
    };
    const validation = await score(data.validation);
    const test = await score(data.test);
    const rows = this.classifier.bias!.length;
    const tokens = data.train.reduce((a, e) => a + e.inputIds.length, 0);
    const wallTimeMs = Date.now() - start;
    return {
      strategy: this.name,
      trainableParameters: rows * train.dim + rows,
      totalParameters: model.countParameters() + rows * train.dim + rows,
      wallTimeMs,
      tokensPerSecond: tokens / Math.max(1e-3, wallTimeMs / 1000),
      peakRssMiB: peakRssMiB(),
      ...(validation ? { validation } : {}),
      ...(test ? { test } : {}),
    };
  }
}

/** Weights enter the key through the embedding of a fixed probe, so a changed model never reads stale features. */
async function cacheKey(model: Model, examples: Example[], pooling: Pooling): Promise<string> {
  const probe = await model.embed({ inputIds: [[1, 2, 3, 4, 5, 6, 7, 8]] }, { pooling });
  const h = crypto.createHash('sha256');
  h.update(JSON.stringify({ config: model.config, task: model.task, pooling, precision: model.precision }));
  h.update(Buffer.from(probe.data.buffer, probe.data.byteOffset, probe.data.byteLength));
  for (const e of examples) h.update(Int32Array.from(e.inputIds)).update('|');
  return h.digest('hex').slice(0, 32);
}
