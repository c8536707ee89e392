import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { builtinSplits, FeatureBased, LogisticRegression, Model, Tokenizer } from '../lib';
import { mulberry32 } from '../lib/random';
import { python, ROOT, tmpDir } from './helpers';

function writeF32(file: string, x: Float32Array) {
  fs.writeFileSync(file, Buffer.from(x.buffer, x.byteOffset, x.byteLength));
}

/** scikit-learn's objective in float64: C * sum of log losses + ||W||^2 / 2 (binary: one row, sigmoid). */
function objective(
  x: Float32Array,
  y: number[],
  dim: number,
  classes: number,
  C: number,
  W: ArrayLike<number>,
  b: ArrayLike<number>,
): number {
  const rows = b.length;
  let loss = 0;
  for (let i = 0; i < y.length; i++) {
    const z = Array.from({ length: rows }, (_, r) => {
      let s = b[r];
      for (let j = 0; j < dim; j++) s += W[r * dim + j] * x[i * dim + j];
      return s;
    });
    if (rows === 1) {
      const m = y[i] === 1 ? z[0] : -z[0];
      loss += m > 0 ? Math.log1p(Math.exp(-m)) : -m + Math.log1p(Math.exp(m));
    } else {
      const top = Math.max(...z);
      loss += top + Math.log(z.reduce((a, v) => a + Math.exp(v - top), 0)) - z[y[i]];
    }
  }
  let norm = 0;
  for (let i = 0; i < W.length; i++) norm += W[i] * W[i];
  return C * loss + norm / 2;
}

async function compareWithSklearn(
  t: any,
  train: { x: Float32Array; y: number[] },
  test_: { x: Float32Array; y: number[] },
  dim: number,
  classes: number,
  C: number,
  tol = 1e-8,
) {
  const dir = tmpDir('logreg');
  writeF32(path.join(dir, 'train.f32'), train.x);
  writeF32(path.join(dir, 'test.f32'), test_.x);
  const spec = path.join(dir, 'spec.json');
  fs.writeFileSync(
    spec,
    JSON.stringify({ dim, C, train: { x: path.join(dir, 'train.f32'), y: train.y }, test: { x: path.join(dir, 'test.f32'), y: test_.y } }),
  );
  const ref = python('logreg.py', [spec]);
  const lr = await new LogisticRegression({ C, maxIter: 2000, tol }).fit(train.x, dim, train.y, classes);
  const acc = lr.accuracy(test_.x, test_.y);
  t.true(Math.abs(acc - ref.test_accuracy) <= 0.01, `tunekit ${acc} vs scikit-learn ${ref.test_accuracy}`);
  // Both minimise F(W, b) = C * sum(log loss) + ||W||^2 / 2, so F is what they must agree on: to 1e-6 relative, which
  // both stopping rules reach (scikit-learn's tol 1e-10; tunekit's gradient tol, near the minimum where F is flat),
  // on any machine's rounding. ||W||^2 / 2 makes F 1-strongly convex in W, so F within `gap` of its minimum puts W
  // within sqrt(2 * gap) of the minimiser. The unpenalised intercept is pinned only by the data's curvature, which
  // for ill-conditioned features is weak, so it is not compared on its own (it moved 1.75e-3 between machines).
  const Fk = objective(train.x, train.y, dim, classes, C, lr.weights!, lr.bias!);
  const Fs = objective(train.x, train.y, dim, classes, C, ref.coef, ref.intercept);
  const gap = Math.abs(Fk - Fs);
  t.true(gap <= 1e-6 * Math.abs(Fs), `objective: tunekit ${Fk}, scikit-learn ${Fs}`);
  let dw = 0;
  lr.weights!.forEach((w: number, i: number) => {
    dw += (w - ref.coef[i]) ** 2;
  });
  t.true(Math.sqrt(dw) <= Math.sqrt(2 * 1e-6 * Math.abs(Fs)) + 1e-6, `weights differ by ${Math.sqrt(dw)} (L2)`);
  t.true(lr.converged);
  return { acc, ref };
}

test('logistic regression: three classes on synthetic data match scikit-learn', async (t) => {
  const rand = mulberry32(3);
  const gauss = () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
  const make = (n: number) => {
    const x = new Float32Array(n * 5);
    const y: number[] = [];
    for (let i = 0; i < n; i++) {
      const c = i % 3;
      y.push(c);
      for (let j = 0; j < 5; j++) x[i * 5 + j] = gauss() + (j === c ? 1.5 : 0);
    }
    return { x, y };
  };
  const { acc } = await compareWithSklearn(t, make(300), make(150), 5, 3, 0.5);
  t.true(acc > 0.6);
});

test('feature-based on tiny-distilbert embeddings: tunekit and scikit-learn agree within 1 point; features cache', async (t) => {
  const dir = path.join(ROOT, 'models', 'tiny-distilbert');
  const model = await Model.fromPretrained(dir, { task: 'feature-extraction' });
  const tok = await Tokenizer.fromPretrained(dir);
  const splits = builtinSplits('imdb-sentences');
  const cacheDir = tmpDir('features-cache');
  const fb = new FeatureBased({ pooling: 'cls', cacheDir });
  const train = splits.train.toExamples(tok, { maxLength: 128 });
  const test_ = splits.test.toExamples(tok, { maxLength: 128 });
  const ftr = await fb.embed(model, train);
  const fte = await fb.embed(model, test_);
  t.is(ftr.dim, 256);
  // The library's default tolerance: these raw 256-wide [CLS] vectors make an ill-conditioned problem on which
  // L-BFGS needs more than 2,000 iterations to reach 1e-8; the objectives agree at 1e-6 either way.
  const { acc } = await compareWithSklearn(
    t,
    { x: ftr.data, y: train.map((e) => e.label!) },
    { x: fte.data, y: test_.map((e) => e.label!) },
    ftr.dim,
    2,
    1,
    1e-6,
  );
  t.log(`test accuracy ${acc}`);
  // Cached: the same features come back from disk, and a different model misses the cache.
  t.is(fs.readdirSync(cacheDir).filter((f) => f.endsWith('.f32')).length, 2);
  const again = await fb.embed(model, train);
  t.deepEqual(again.data, ftr.data);
  const other = await Model.fromConfig(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')), {
    task: 'feature-extraction',
    seed: 5,
  });
  await fb.embed(other, train.slice(0, 4));
  t.is(fs.readdirSync(cacheDir).filter((f) => f.endsWith('.f32')).length, 3);
  model.dispose();
  other.dispose();
});

test('logistic regression rejects bad input clearly', async (t) => {
  const lr = new LogisticRegression();
  await t.throwsAsync(lr.fit(new Float32Array(6), 4, [0, 1]), { code: 'E_SHAPE' } as any);
  await t.throwsAsync(lr.fit(new Float32Array(4), 2, [0, 5], 2), { code: 'E_RANGE', message: /label 5 at row 1/ } as any);
  await t.throwsAsync(lr.fit(Float32Array.from([NaN, 1, 2, 3]), 2, [0, 1]), { code: 'E_NAN' } as any);
  t.throws(() => lr.predict(new Float32Array(2)), { code: 'E_STATE' } as any);
});
