import test from 'ava';
import path from 'node:path';
import { builtinSplits, InContext, Model, PromptSearch, Tokenizer, TunekitError } from '../lib';
import { edit } from '../lib/strategies/prompt-search';
import { mulberry32, shuffled } from '../lib/random';
import { ROOT } from './helpers';

const TEMPLATE = 'Review of the film: {text}\nThe sentiment of this review is {label}';
const words = (t: string) =>
  t
    .replace(/\{text\}|\{label\}/g, ' ')
    .split(/\s+/)
    .filter(Boolean)
    .sort();

test('prompt-search edits: delete, swap and add change only the wording; the slots stay, in order', (t) => {
  const rand = mulberry32(5);
  const seen = new Set<string>();
  for (let i = 0; i < 300; i++) {
    const e = edit(TEMPLATE, ['Please answer:'], rand)!;
    seen.add(e.edit);
    t.is(e.template.split('{text}').length, 2, e.template);
    t.is(e.template.split('{label}').length, 2, e.template);
    t.true(e.template.indexOf('{text}') < e.template.indexOf('{label}'), e.template);
    if (e.edit === 'swap') t.deepEqual(words(e.template), words(TEMPLATE), e.template);
    if (e.edit === 'delete') {
      t.is(typeof e.removed, 'string'); // empty when the phrase was a line break
      const left = words(e.template);
      for (const w of e.removed!.split(/\s+/).filter(Boolean)) left.push(w);
      t.deepEqual(left.sort(), words(TEMPLATE), `${e.template} + ${e.removed}`);
    }
    if (e.edit === 'add') t.deepEqual(words(e.template), [...words(TEMPLATE), 'Please', 'answer:'].sort(), e.template);
  }
  t.deepEqual([...seen].sort(), ['add', 'delete', 'swap']);
  t.is(edit('{text}{label}', [], rand), undefined, 'nothing to edit');
  // Without demonstrations the text after {label} is never shown: it is left alone.
  for (let i = 0; i < 50; i++) t.true(edit('A {text} B {label} tail words', ['x'], rand, false)!.template.endsWith('{label} tail words'));
});

test('prompt-search: every candidate is scored on the fixed sample as InContext scores it, and the best beats or ties the start', async (t) => {
  const dir = path.join(ROOT, 'models', 'tiny-gpt2');
  const model = await Model.fromPretrained(dir);
  const tokenizer = await Tokenizer.fromPretrained(dir);
  const splits = builtinSplits('imdb-sentences');
  const [train, validation, testSplit] = [splits.train, splits.validation, splits.test].map((d) =>
    d.toExamples(tokenizer, { maxLength: 40 }),
  );
  const labelWords = ['negative', 'positive'];
  const settings = {
    tokenizer,
    template: TEMPLATE,
    labelWords,
    devSize: 24,
    beam: 2,
    candidates: 2,
    iterations: 2,
    labelCandidates: 2,
    seed: 9,
  };
  const result = await new PromptSearch(settings).run(model, { train, validation, test: testSplit.slice(0, 40) });
  t.is(result.candidates[0].edit, 'initial');
  t.true(result.candidates.length > 3);
  t.true(
    result.candidates.some((c) => c.edit === 'label'),
    'the label-word search ran',
  );
  for (const c of result.candidates.filter((x) => x.edit === 'label'))
    t.true(
      c.labelWords.every((w) => /^[A-Za-z]{3,}$/.test(w)),
      `whole words: ${c.labelWords}`,
    );
  // Rescore one edited candidate independently on the same sample.
  const dev = shuffled(validation.length, 9)
    .slice(0, 24)
    .map((i) => validation[i]);
  const pick = result.candidates[result.candidates.length - 1];
  const again = await new InContext({ tokenizer, template: pick.template, labelWords: pick.labelWords, seed: 9 }).run(model, {
    train,
    validation: dev,
  });
  t.is(again.validation!.accuracy, pick.accuracy);
  const initial = result.candidates[0];
  const bestOnSample = result.candidates.find(
    (c) => c.template === result.best.template && c.labelWords.join() === result.best.labelWords.join(),
  )!;
  t.true(bestOnSample.accuracy >= initial.accuracy);
  t.truthy(result.initial.test && result.best.test && result.best.validation);
  t.is(result.initial.test!.examples, 40);
  model.dispose();
});

test('prompt-search refuses what it cannot search', async (t) => {
  const tokenizer = await Tokenizer.fromPretrained(path.join(ROOT, 'models', 'tiny-gpt2'));
  t.throws(() => new PromptSearch({ tokenizer, labelWords: ['a', 'b'], template: 'no slots' }), { instanceOf: TunekitError });
  t.throws(() => new PromptSearch({ tokenizer, labelWords: ['bad', 'good'], pool: ['has {text}'] }), { instanceOf: TunekitError });
  t.throws(() => new PromptSearch({ tokenizer, labelWords: ['bad', 'good'], beam: 0 }), { instanceOf: TunekitError });
  const model = await Model.fromPretrained(path.join(ROOT, 'models', 'tiny-gpt2'));
  await t.throwsAsync(new PromptSearch({ tokenizer, labelWords: ['bad', 'good'] }).run(model, { train: [] }), { message: /validation/ });
  model.dispose();
});
