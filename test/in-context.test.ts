import test from 'ava';
import path from 'node:path';
import { builtinSplits, InContext, Model, Tokenizer, TunekitError } from '../lib';
import type { Example } from '../lib';
import { python, ROOT } from './helpers';

const DIR = path.join(ROOT, 'models', 'tiny-gpt2');
const LABEL_WORDS = ['negative', 'positive'];

async function setup() {
  const model = await Model.fromPretrained(DIR);
  const tokenizer = await Tokenizer.fromPretrained(DIR);
  const splits = builtinSplits('imdb-sentences');
  const train = splits.train.toExamples(tokenizer, { maxLength: 40 }).slice(0, 40);
  const test = splits.test.toExamples(tokenizer, { maxLength: 40 }).slice(0, 8);
  return { model, tokenizer, train, test };
}

test('icl: the prompt is the template around demonstrations and the query, the space before {label} on the label word', async (t) => {
  const { model, tokenizer, train } = await setup();
  const icl = new InContext({ tokenizer, template: 'Review: {text}\nSentiment: {label}', labelWords: LABEL_WORDS, shots: 2 });
  const enc = (s: string) => tokenizer.encode(s, { addSpecialTokens: false });
  const [a, b] = train;
  const { ids, shots } = icl.prompt(model, [a, b], [7, 8, 9]);
  const demo = (e: Example) => [
    ...enc('Review: '),
    ...e.inputIds,
    ...enc('\nSentiment:'),
    ...enc(` ${LABEL_WORDS[e.label!]}`),
    ...enc('\n\n'),
  ];
  t.deepEqual(ids, [...demo(a), ...demo(b), ...enc('Review: '), 7, 8, 9, ...enc('\nSentiment:')]);
  t.is(shots, 2);
  // Too long for the 128-position context: the farthest demonstrations go first, the query stays whole.
  const long = { inputIds: new Array(50).fill(11), label: 1 };
  const cut = icl.prompt(model, [long, long, a], [7, 8, 9]);
  t.is(cut.shots, 2);
  t.true(cut.ids.length <= 128);
  t.deepEqual(cut.ids, [...demo(long), ...demo(a), ...enc('Review: '), 7, 8, 9, ...enc('\nSentiment:')]);
  model.dispose();
});

test('icl: label scores and calibration match transformers on the same prompts', async (t) => {
  const { model, tokenizer, train, test: queries } = await setup();
  for (const calibrate of [false, true]) {
    const icl = new InContext({ tokenizer, labelWords: LABEL_WORDS, shots: 2, selection: 'balanced', calibrate, seed: 3 });
    const result = await icl.run(model, { train, test: queries });
    // The same prompts, scored by Python: demonstrations are the fixed balanced draw.
    const demos = icl.draw(train, 2);
    t.deepEqual(demos.map((d) => d.label).sort(), [0, 1], 'balanced: one of each class');
    const prompts = queries.map((q) => icl.prompt(model, demos, q.inputIds).ids);
    const free = queries.map(() => icl.prompt(model, demos, tokenizer.encode('N/A', { addSpecialTokens: false })).ids);
    const labels = LABEL_WORDS.map((w) => tokenizer.encode(` ${w}`, { addSpecialTokens: false }));
    const ref = python('in_context.py', [DIR, JSON.stringify({ prompts, free, labels })]);
    const lp: number[][] = calibrate ? ref.calibrated : ref.raw;
    const want = lp.filter((row, i) => row.indexOf(Math.max(...row)) === queries[i].label).length / queries.length;
    t.is(result.test!.accuracy, want, `calibrate ${calibrate}`);
    const loss = -lp.reduce((a, row, i) => a + row[queries[i].label!], 0) / queries.length;
    t.true(Math.abs(result.test!.loss - loss) < 1e-4 * Math.abs(loss), `loss ${result.test!.loss} vs ${loss}`);
    t.is(result.trainableParameters, 0);
    t.is(result.shotsUsed, 2);
  }
  model.dispose();
});

test("icl: 'similar' puts the training examples nearest the query last", async (t) => {
  const { model, tokenizer, train, test: queries } = await setup();
  // The query itself sits in the training split: it is its own nearest neighbour, so it is the last demonstration.
  const query = queries[0];
  const pool = [...train.slice(0, 10), query];
  let seen: number[] | undefined;
  const icl = new InContext({ tokenizer, labelWords: LABEL_WORDS, shots: 3, selection: 'similar' });
  const prompt = icl.prompt.bind(icl);
  icl.prompt = (m, demos, q) => {
    seen ??= demos.map((d) => pool.indexOf(d));
    return prompt(m, demos, q);
  };
  await icl.run(model, { train: pool, test: [query] });
  t.is(seen!.length, 3);
  t.is(seen![2], pool.length - 1);
  model.dispose();
});

test('icl: bad options and data are refused clearly', async (t) => {
  const { model, tokenizer, train } = await setup();
  const bad = (o: object) =>
    t.throws(() => new InContext({ tokenizer, labelWords: LABEL_WORDS, ...o } as never), { instanceOf: TunekitError });
  bad({ template: 'no slots here' });
  bad({ template: '{label} before {text}' });
  bad({ labelWords: ['only'] });
  bad({ labelWords: ['yes', '  '] });
  bad({ selection: 'nearest' });
  bad({ shot: 4 });
  const icl = new InContext({ tokenizer, labelWords: LABEL_WORDS, shots: 1000 });
  await t.throwsAsync(icl.run(model, { train }), { instanceOf: TunekitError, message: /1000 shots/ });
  const encoder = await Model.fromPretrained(path.join(ROOT, 'models', 'tiny-distilbert'));
  await t.throwsAsync(new InContext({ tokenizer, labelWords: LABEL_WORDS }).run(encoder, { train }), { message: /causal-lm/ });
  model.dispose();
  encoder.dispose();
});
