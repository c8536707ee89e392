import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { builtinSplits, FeatureBased, LogisticRegression, Model, Tokenizer } from '../lib';
import { mulberry32 } from '../lib/trainer';
import { python, relError, ROOT, tmpDir } from './helpers';

function writeF32(file: string, x: Float32Array) {
  fs.writeFileSync(file, Buffer.from(x.buffer, x.byteOffset, x.byteLength));
}

async function compareWithSklearn(t: any, train: { x: Float32Array; y: number[] }, test_: { x: Float32Array; y: number[] }, dim: number, classes: number, C: number, tol = 1e-8) {
  const dir = tmpDir('logreg');
  writeF32(path.join(dir, 'train.f32'), train.x);
  writeF32(path.join(dir, 'test.f32'), test_.x);
  const spec = path.join(dir, 'spec.json');
  fs.writeFileSync(spec, JSON.stringify({ dim, C, train: { x: path.join(dir, 'train.f32'), y: train.y }, test: { x: path.join(dir, 'test.f32'), y: test_.y } }));
  const ref = python('logreg.py', [spec]);
  const lr = await new LogisticRegression({ C, maxIter: 2000, tol }).fit(train.x, dim, train.y, classes);
  const acc = lr.accuracy(test_.x, test_.y);
  t.true(Math.abs(acc - ref.test_accuracy) <= 0.01, `tunekit ${acc} vs scikit-learn ${ref.test_accuracy}`);
  const coefErr = relError(lr.weights!, ref.coef);
  const biasErr = relError(lr.bias!, ref.intercept);
  t.true(coefErr < 1e-3 && biasErr < 1e-3, `coefficients ${coefErr}, intercepts ${biasErr}`);
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
  // L-BFGS needs more than 2,000 iterations to reach 1e-8, and the coefficients agree to 1e-3 either way.
  const { acc } = await compareWithSklearn(t, { x: ftr.data, y: train.map((e) => e.label!) }, { x: fte.data, y: test_.map((e) => e.label!) }, ftr.dim, 2, 1, 1e-6);
  t.log(`test accuracy ${acc}`);
  // Cached: the same features come back from disk, and a different model misses the cache.
  t.is(fs.readdirSync(cacheDir).filter((f) => f.endsWith('.f32')).length, 2);
  const again = await fb.embed(model, train);
  t.deepEqual(again.data, ftr.data);
  const other = await Model.fromConfig(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')), { task: 'feature-extraction', seed: 5 });
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
