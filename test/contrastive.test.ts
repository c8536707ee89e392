import path from 'node:path';
import test from 'ava';
import { ContrastiveTrainer, Model, SGD, Tokenizer, TunekitError } from '../lib';
import { ATTENTION_MASK, INPUT_IDS, modelDir, python, readTensors, relError, ROOT, tmpDir } from './helpers';

// Three anchors (the shared test rows), then three positives and three hard negatives of other lengths and padding.
const POSITIVES = [
  [5, 17, 33, 2, 91, 0, 0],
  [11, 3, 64, 29, 8, 40, 1],
  [0, 0, 44, 12, 70, 9, 9],
];
const NEGATIVES = [
  [60, 61, 62, 63, 0, 0, 0],
  [70, 71, 72, 73, 74, 75, 76],
  [0, 80, 81, 82, 83, 84, 85],
];
const maskOf = (rows: number[][], pads: number[][]) => rows.map((r, i) => r.map((_, j) => (pads[i].includes(j) ? 0 : 1)));
const POS_MASK = maskOf(POSITIVES, [[5, 6], [], [0, 1]]);
const NEG_MASK = maskOf(NEGATIVES, [[4, 5, 6], [], [0]]);

for (const negatives of [false, true]) {
  test(`multiple-negatives ranking loss and every gradient match sentence-transformers' math${negatives ? ', with hard negatives' : ''}`, async (t) => {
    const dir = modelDir('distilbert-base');
    const model = await Model.fromPretrained(dir, { task: 'feature-extraction' });
    const inputIds = [...INPUT_IDS, ...POSITIVES, ...(negatives ? NEGATIVES : [])];
    const attentionMask = [...ATTENTION_MASK, ...POS_MASK, ...(negatives ? NEG_MASK : [])];
    const ref = python('contrastive.py', [dir, JSON.stringify({ ids: inputIds, mask: attentionMask, anchors: 3, scale: 20 })]);
    await model.train();
    const opt = new SGD(model, { lr: 1, weightDecay: 0 });
    const stats = await model.objective(
      { inputIds, attentionMask },
      { name: 'multiple-negatives-ranking', numbers: { anchors: 3, scale: 20 }, strings: { pooling: 'mean' } },
      { backward: true },
    );
    t.true(Math.abs(stats.loss - ref.loss) / ref.loss < 1e-5, `loss ${stats.loss} vs ${ref.loss}`);
    t.true(ref.loss > 0.05, 'a loss near zero would make the gradients vanish and the test mean nothing');
    const before = readTensors(path.join(dir, 'model.safetensors'));
    await opt.step();
    const out = tmpDir('contrastive');
    await model.savePretrained(out);
    const after = readTensors(path.join(out, 'model.safetensors'));
    const grads = Object.entries(ref.grads as Record<string, number[]>);
    t.true(grads.length > 10);
    const largest = Math.max(...grads.flatMap(([, g]) => g.map(Math.abs)));
    let worst = 0;
    for (const [name, g] of grads) {
      const step = after.get(name)!.map((v, i) => before.get(name)![i] - v);
      if (name.endsWith('attention.k_lin.bias')) {
        // Softmax ignores a shift shared by all of a query's scores: zero gradient in exact arithmetic, rounding noise here.
        for (const v of [...step, ...g]) t.true(Math.abs(v) <= 1e-6 * largest, `${name}: ${v}`);
        continue;
      }
      worst = Math.max(worst, relError(step, g));
    }
    t.log(`worst gradient relative error: ${worst.toExponential(2)}`);
    t.true(worst < 1e-4);
    model.dispose();
  });
}

test('ContrastiveTrainer pulls each sentence towards its own other half', async (t) => {
  const dir = path.join(ROOT, 'models', 'tiny-distilbert');
  const model = await Model.fromPretrained(dir, { task: 'feature-extraction' });
  const tokenizer = await Tokenizer.fromPretrained(dir);
  const sentences = [
    'the whale swam under the boat and the sailors watched it go',
    'the senate passed the budget bill after a long debate about taxes',
    'rain fell on the city all night and the streets became rivers',
    'the chef baked bread and roasted a chicken for the wedding',
    'stocks fell as investors feared the bank would raise rates',
    'the children played football in the park until the sun went down',
    'the old church bell rang three times before the service began',
    'the train to the coast was late because of snow on the tracks',
  ];
  const pairs = sentences.map((s) => {
    const w = s.split(' ');
    return { anchor: w.slice(0, 6).join(' '), positive: w.slice(6).join(' ') };
  });
  const trainer = new ContrastiveTrainer(model, { tokenizer, batchSize: 8, epochs: 30, lr: 1e-3, seed: 1 });
  const before = await trainer.evaluate(pairs);
  const { history } = await trainer.train(pairs);
  const after = await trainer.evaluate(pairs);
  t.log(`loss ${before.loss.toFixed(3)} -> ${after.loss.toFixed(3)}, accuracy ${before.accuracy} -> ${after.accuracy}`);
  t.is(history.length, 30);
  t.true(after.loss < before.loss / 2);
  t.true(after.accuracy > before.accuracy);
  t.is(after.accuracy, 1);
  model.dispose();
});

test('ContrastiveTrainer: bad input is a clear error', async (t) => {
  const dir = path.join(ROOT, 'models', 'tiny-distilbert');
  const tokenizer = await Tokenizer.fromPretrained(dir);
  const lm = await Model.fromPretrained(dir);
  t.is(t.throws(() => new ContrastiveTrainer(lm, { tokenizer }), { instanceOf: TunekitError })!.code, 'E_CONFIG');
  lm.dispose();
  const model = await Model.fromPretrained(dir, { task: 'feature-extraction' });
  t.is(t.throws(() => new ContrastiveTrainer(model, { tokenizer, scale: 0 }), { instanceOf: TunekitError })!.code, 'E_ARG');
  t.is(t.throws(() => new ContrastiveTrainer(model, { tokenizer, pooling: 'max' as never }), { instanceOf: TunekitError })!.code, 'E_ARG');
  const trainer = new ContrastiveTrainer(model, { tokenizer });
  const errs = [
    await t.throwsAsync(trainer.train([{ anchor: 'a b', positive: 'c d' }])),
    await t.throwsAsync(
      trainer.train([
        { anchor: 'a', positive: 'b', negative: 'c' },
        { anchor: 'a', positive: 'b' },
      ]),
    ),
    await t.throwsAsync(
      trainer.train([
        { anchor: 'a', positive: '' },
        { anchor: 'a', positive: 'b' },
      ]),
    ),
    await t.throwsAsync(new ContrastiveTrainer(model).train([{ anchor: 'a', positive: 'b' }])),
  ];
  t.deepEqual(
    errs.map((e) => (e as TunekitError).code),
    ['E_ARG', 'E_ARG', 'E_TYPE', 'E_ARG'],
  );
  const shape = await t.throwsAsync(
    model.objective(
      { inputIds: INPUT_IDS.map((r) => r.map((x) => x + 100)) },
      { name: 'multiple-negatives-ranking', numbers: { anchors: 2 }, strings: { pooling: 'mean' } },
      { backward: false },
    ),
    { instanceOf: TunekitError },
  );
  t.is((shape as TunekitError).code, 'E_SHAPE');
  model.dispose();
});
