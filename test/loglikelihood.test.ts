import test from 'ava';
import { Model, TunekitError } from '../lib';
import { modelDir, python } from './helpers';

const PROMPT = [5, 17, 33, 2, 90, 41, 7, 11];
// Different lengths, so that padding inside the batch of continuations is exercised too.
const CONTINUATIONS = [[3], [64, 29], [8, 12, 70, 9], [44, 44, 1]];

for (const name of ['gpt2-causal-lm', 'llama-causal-lm']) {
  test(`${name}: logLikelihood matches one full transformers forward per continuation`, async (t) => {
    const model = await Model.fromPretrained(modelDir(name));
    const ref = python('loglikelihood.py', [modelDir(name), JSON.stringify(PROMPT), JSON.stringify(CONTINUATIONS)]);
    const got = await model.logLikelihood(PROMPT, CONTINUATIONS);
    t.is(got.length, CONTINUATIONS.length);
    got.forEach((g, i) =>
      t.true(Math.abs(g - ref.scores[i]) / Math.abs(ref.scores[i]) < 1e-5, `continuation ${i}: ${g} vs ${ref.scores[i]}`),
    );
    model.dispose();
  });
}

test('logLikelihood refuses bad input with clear errors', async (t) => {
  const model = await Model.fromPretrained(modelDir('gpt2-causal-lm'));
  const code = async (p: Promise<unknown>) => ((await t.throwsAsync(p, { instanceOf: TunekitError })) as TunekitError).code;
  t.is(await code(model.logLikelihood(PROMPT, [[3], []])), 'E_SHAPE');
  t.is(await code(model.logLikelihood([], [[3]])), 'E_SHAPE');
  t.is(await code(model.logLikelihood(PROMPT, [[model.vocabSize]])), 'E_RANGE');
  t.is(await code(model.logLikelihood(PROMPT, [[1.5]])), 'E_TYPE');
  t.is(await code(model.logLikelihood(new Array(30).fill(3), [[1, 2, 3, 4]])), 'E_RANGE'); // 32 positions
  const encoder = await Model.fromPretrained(modelDir('distilbert-masked-lm'));
  t.is(await code(encoder.logLikelihood(PROMPT, [[3]])), 'E_STATE');
  model.dispose();
  encoder.dispose();
});
