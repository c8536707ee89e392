// Tokenizer.fromPretrained over @huggingface/tokenizers gives the ids the Rust tokenizers library gives.
import test from 'ava';
import { Tokenizer, TunekitError } from '../lib';
import { modelDir, reference, tmpDir } from './helpers';

const ref = reference('tokenizers');

for (const name of ['tokenizer-bpe', 'tokenizer-wordpiece']) {
  test(`${name}: encode and decode match the tokenizers library`, async (t) => {
    const tok = await Tokenizer.fromPretrained(modelDir(name));
    ref[name].texts.forEach((text: string, i: number) => {
      t.deepEqual(tok.encode(text), ref[name].ids[i], text);
    });
    t.is(tok.decode(ref[name].ids[0], { skipSpecialTokens: true }).trim().toLowerCase(), ref[name].decoded[0].trim().toLowerCase());
  });
}

test('encodeBatch pads, truncates and builds attention masks on either side', async (t) => {
  const tok = await Tokenizer.fromPretrained(modelDir('tokenizer-wordpiece'));
  const texts = ref['tokenizer-wordpiece'].texts.slice(0, 2);
  const ids = ref['tokenizer-wordpiece'].ids.slice(0, 2) as number[][];
  const longest = Math.max(...ids.map((r) => r.length));
  const right = tok.encodeBatch(texts);
  t.is(tok.padTokenId, 0);
  right.inputIds.forEach((r, i) => {
    t.is(r.length, longest);
    t.deepEqual(r.slice(0, ids[i].length), ids[i]);
    t.deepEqual(
      right.attentionMask[i],
      r.map((_, j) => (j < ids[i].length ? 1 : 0)),
    );
  });
  const left = tok.encodeBatch(texts, { paddingSide: 'left' });
  left.inputIds.forEach((r, i) => t.deepEqual(r.slice(longest - ids[i].length), ids[i]));
  // Truncation keeps the template's [CLS] ... [SEP] and cuts the text between them, as transformers does.
  const cut = (r: number[], n: number) => (r.length <= n ? r : [...r.slice(0, n - 1), r[r.length - 1]]);
  const fixed = tok.encodeBatch(texts, { padding: 6 });
  t.deepEqual(
    fixed.inputIds,
    ids.map((r) => cut(r, 6)),
  );
  t.true(
    fixed.inputIds.every((r) => r[0] === 2 && r[5] === 3),
    '[CLS] first, [SEP] last',
  );
  const trunc = tok.encodeBatch(texts, { maxLength: 4 });
  t.true(trunc.inputIds.every((r) => r.length === 4));
  t.deepEqual(tok.encode(texts[0], { addSpecialTokens: false, maxLength: 2 }), ids[0].slice(1, 3));
});

test('a missing or corrupt tokenizer.json is a TunekitError', async (t) => {
  const e = await t.throwsAsync(Tokenizer.fromPretrained(tmpDir('tok')), { instanceOf: TunekitError });
  t.is(e!.code, 'E_FILE');
  const dir = tmpDir('tok');
  (await import('node:fs')).writeFileSync(`${dir}/tokenizer.json`, '{"model": 1');
  const f = await t.throwsAsync(Tokenizer.fromPretrained(dir), { instanceOf: TunekitError });
  t.is(f!.code, 'E_FORMAT');
});
