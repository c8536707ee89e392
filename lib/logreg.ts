/** L2-regularised logistic regression, fitted by L-BFGS in the native core (scikit-learn's objective). */
import { TunekitError } from './errors';
import { addon, serial } from './native';
import { MAX_CLASSES } from './data/dataset';
import { readJsonFile, writeJsonAtomic } from './safetensors';
import { checkNumber, checkOptions, show } from './validate';

export interface LogisticRegressionOptions {
  /** Inverse regularisation strength, as scikit-learn's C (default 1). */
  C?: number;
  maxIter?: number;
  tol?: number;
}

export class LogisticRegression {
  readonly options: Required<LogisticRegressionOptions>;
  weights?: Float64Array;
  bias?: Float64Array;
  classes = 0;
  dim = 0;
  iterations = 0;
  converged = false;
  trainLoss = NaN;

  constructor(options: LogisticRegressionOptions = {}) {
    checkOptions(options, ['C', 'maxIter', 'tol'], 'LogisticRegression');
    this.options = {
      C: checkNumber(options.C, 'C', { min: 0, minExclusive: true }, 1),
      maxIter: checkNumber(options.maxIter, 'maxIter', { integer: true, min: 1 }, 1000),
      tol: checkNumber(options.tol, 'tol', { min: 0, minExclusive: true }, 1e-6),
    };
  }

  /** Fits on n rows of `dim` features (row-major) with labels in [0, classes). */
  async fit(x: Float32Array, dim: number, y: ArrayLike<number>, classes?: number): Promise<this> {
    if (!(x instanceof Float32Array)) throw new TunekitError('E_TYPE', 'features must be a Float32Array');
    if (!Number.isInteger(dim) || dim < 1 || x.length % dim !== 0)
      throw new TunekitError('E_SHAPE', `features of length ${x.length} do not split into rows of ${dim}`);
    const n = x.length / dim;
    if (y === null || typeof y !== 'object' || typeof y.length !== 'number' || y.length !== n)
      throw new TunekitError('E_SHAPE', `labels must have ${n} entries, one per row of features`);
    const bound = classes === undefined ? MAX_CLASSES : checkNumber(classes, 'classes', { integer: true, min: 2, max: MAX_CLASSES });
    let top = 0;
    for (let i = 0; i < n; i++) {
      const v = y[i];
      if (!Number.isInteger(v) || v < 0 || v >= bound)
        throw new TunekitError('E_RANGE', `label ${show(v)} at row ${i} is outside [0, ${bound}) (labels are class ids)`);
      top = Math.max(top, v);
    }
    const k = classes ?? Math.max(2, top + 1);
    const labels = Int32Array.from(y);
    const r = await serial(() => addon.logRegFit(x, n, dim, labels, k, this.options));
    Object.assign(this, {
      weights: r.weights,
      bias: r.bias,
      classes: k,
      dim,
      iterations: r.iterations,
      converged: r.converged,
      trainLoss: r.loss,
    });
    return this;
  }

  /** Class probabilities, [n, classes] row-major. */
  predictProba(x: Float32Array): Float64Array {
    const { weights: W, bias: b, dim, classes } = this;
    if (!W || !b) throw new TunekitError('E_STATE', 'logistic regression is not fitted');
    if (x.length % dim !== 0) throw new TunekitError('E_SHAPE', `features of length ${x.length} do not split into rows of ${dim}`);
    const n = x.length / dim;
    const out = new Float64Array(n * classes);
    const rows = b.length;
    const z = new Float64Array(rows);
    for (let i = 0; i < n; i++) {
      for (let r = 0; r < rows; r++) {
        let s = b[r];
        for (let j = 0; j < dim; j++) s += W[r * dim + j] * x[i * dim + j];
        z[r] = s;
      }
      if (rows === 1) {
        const p = 1 / (1 + Math.exp(-z[0]));
        out[i * 2] = 1 - p;
        out[i * 2 + 1] = p;
      } else {
        const m = Math.max(...z);
        let sum = 0;
        for (let r = 0; r < rows; r++) sum += out[i * classes + r] = Math.exp(z[r] - m);
        for (let r = 0; r < rows; r++) out[i * classes + r] /= sum;
      }
    }
    return out;
  }

  predict(x: Float32Array): Int32Array {
    const p = this.predictProba(x);
    const n = p.length / this.classes;
    const out = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      let best = 0;
      for (let c = 1; c < this.classes; c++) if (p[i * this.classes + c] > p[i * this.classes + best]) best = c;
      out[i] = best;
    }
    return out;
  }

  accuracy(x: Float32Array, y: ArrayLike<number>): number {
    const pred = this.predict(x);
    if (pred.length !== y.length) throw new TunekitError('E_SHAPE', `${pred.length} rows of features but ${y.length} labels`);
    let ok = 0;
    pred.forEach((p, i) => {
      if (p === y[i]) ok++;
    });
    return ok / pred.length;
  }

  /** Weights as JSON (small: classes x dim numbers). */
  async save(file: string): Promise<void> {
    if (!this.weights || !this.bias) throw new TunekitError('E_STATE', 'logistic regression is not fitted');
    await writeJsonAtomic(file, {
      type: 'logistic-regression',
      C: this.options.C,
      classes: this.classes,
      dim: this.dim,
      weights: Array.from(this.weights),
      bias: Array.from(this.bias),
    });
  }

  static load(file: string): LogisticRegression {
    const j = readJsonFile(file);
    if (j?.type !== 'logistic-regression') throw new TunekitError('E_FORMAT', `${file}: not a saved logistic regression`);
    const lr = new LogisticRegression({ C: j.C });
    Object.assign(lr, { classes: j.classes, dim: j.dim, weights: Float64Array.from(j.weights), bias: Float64Array.from(j.bias) });
    return lr;
  }
}
