import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { Model, PromptTuning, Tokenizer } from '../lib';
import { readHeader } from '../lib/safetensors';
import {
  adapterTensors,
  ATTENTION_MASK,
  CLASS_LABELS,
  DEVICE,
  expectGradients,
  INPUT_IDS,
  modelDir,
  python,
  relError,
  tmpDir,
  trainThenSaveAdapter,
} from './helpers';

// gpt2/llama classification behind a soft prompt: PEFT feeds embeddings, so transformers takes the last position
// whatever the padding; tunekit takes the last real token. Rows without right padding agree either way.
const CASES = [
  { name: 'gpt2-seq-cls', classify: true, rows: [0, 2] },
  { name: 'llama-causal-lm', classify: false, rows: [0, 1, 2] },
  { name: 'distilbert-seq-cls', classify: true, rows: [0, 1, 2] },
  { name: 'bert-seq-cls', classify: true, rows: [0, 1, 2] },
];

function batchFor(classify: boolean, rows: number[]) {
  const inputIds = rows.map((r) => INPUT_IDS[r]);
  const attentionMask = rows.map((r) => ATTENTION_MASK[r]);
  const labels = classify
    ? rows.map((r) => CLASS_LABELS[r])
    : inputIds.map((ids, i) => ids.map((t, j) => (attentionMask[i][j] ? t : -100)));
  return { inputIds, attentionMask, labels };
}

for (const c of CASES) {
  test(`prompt tuning on ${c.name}: a PEFT adapter loads with PEFT's logits, loss and gradients`, async (t) => {
    const dir = tmpDir('peft-prompt');
    const ref = python('peft_prompt.py', [
      'create',
      modelDir(c.name),
      dir,
      JSON.stringify({ num_virtual_tokens: 4, rows: c.rows, seed: 2 }),
    ]);
    const model = await Model.fromPretrained(modelDir(c.name), { device: DEVICE });
    await model.loadAdapter(dir, { trainable: true });
    t.is(model.countParameters({ trainableOnly: true }), ref.trainable);
    await model.train();
    const batch = batchFor(c.classify, c.rows);
    const out = await model.forward(batch);
    t.deepEqual(out.logits.shape, ref.shape);
    t.true(relError(out.logits.data, ref.logits) < 1e-5, `logits ${relError(out.logits.data, ref.logits)}`);
    t.true(Math.abs(out.loss! - ref.loss) / Math.abs(ref.loss) < 1e-5, `loss ${out.loss} vs ${ref.loss}`);
    const before = await adapterTensors(model);
    await expectGradients(t, model, batch, before, ref.grads, /modules_to_save|prompt_encoder/);
    model.dispose();
  });

  test(`prompt tuning on ${c.name}: trained in tunekit, loaded by PEFT with the same logits`, async (t) => {
    const model = await Model.fromPretrained(modelDir(c.name), { device: DEVICE });
    await new PromptTuning({ numVirtualTokens: 3, seed: 4 }).apply(model);
    const { mine, dir } = await trainThenSaveAdapter(model, batchFor(c.classify, c.rows), 'tk-prompt');
    t.is(JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8')).peft_type, 'PROMPT_TUNING');
    const ref = python('peft_prompt.py', ['load', modelDir(c.name), dir, JSON.stringify(c.rows)]);
    t.true(relError(mine.logits.data, ref.logits) < 1e-4, `tunekit vs PEFT logits ${relError(mine.logits.data, ref.logits)}`);
    await t.throwsAsync(model.mergeAdapter(), { code: 'E_STATE' } as any);
    model.dispose();
  });
}

test("prompt tuning: TEXT initialisation copies the init text's embeddings; virtual tokens count against the position limit", async (t) => {
  const model = await Model.fromPretrained(modelDir('gpt2-causal-lm'), { device: DEVICE });
  // The tiny test model's vocabulary is smaller than any real tokenizer's: a stand-in gives ids it has.
  const ids = [3, 17, 41];
  const tok = { encode: (text: string) => (text === 'the of and' ? ids : []) } as unknown as Tokenizer;
  await new PromptTuning({ numVirtualTokens: 5, promptTuningInitText: 'the of and', tokenizer: tok }).apply(model);
  const tensors = await adapterTensors(model);
  const prompt = tensors.get('prompt_embeddings')!;
  const wte = await (async () => {
    const dir = tmpDir('wte');
    await model.savePretrained(dir);
    const file = path.join(dir, 'model.safetensors');
    const e = readHeader(file).tensors.get('transformer.wte.weight')!;
    const buf = fs.readFileSync(file);
    return new Float32Array(buf.buffer.slice(buf.byteOffset + e.begin, buf.byteOffset + e.end));
  })();
  const hidden = prompt.length / 5;
  for (let v = 0; v < 5; v++) {
    const id = ids[v % ids.length];
    t.deepEqual(prompt.subarray(v * hidden, (v + 1) * hidden), wte.subarray(id * hidden, (id + 1) * hidden));
  }
  const limit = Number(model.config.n_positions);
  await t.throwsAsync(model.forward({ inputIds: [Array.from({ length: limit - 2 }, () => 1)] }), {
    code: 'E_RANGE',
    message: /virtual tokens/,
  } as any);
  model.dispose();
});
