// tunekit against transformers 5.17 on the same random weights and inputs (references: test/reference/make_reference.py).
import test from 'ava';
import { Model } from '../lib';
import { ATTENTION_MASK, CLASS_LABELS, DEVICE, INPUT_IDS, LM_LABELS, modelDir, reference, relError } from './helpers';

const CASES = [
  'gpt2-causal-lm',
  'gpt2-seq-cls',
  'gpt2-base',
  'llama-causal-lm',
  'llama-tied-causal-lm',
  'llama-seq-cls',
  'llama-base',
  'distilbert-seq-cls',
  'distilbert-base',
  'distilbert-masked-lm',
  'gpt2-causal-lm-f16',
  'llama-causal-lm-bf16',
  'bert-seq-cls',
  'bert-base',
  'bert-masked-lm',
  'qwen2-causal-lm',
  'qwen2-tied-causal-lm',
  'qwen2-seq-cls',
  'qwen2-base',
];

/** Positions whose output means something: padded positions are garbage in both implementations. */
function realPositions(shape: number[], rows: number[][], task: string): (i: number) => boolean {
  if (task === 'sequence-classification') return () => true;
  const per = shape.slice(2).reduce((a, b) => a * b, 1);
  const seq = shape[1];
  return (i) => rows[Math.floor(i / (seq * per))][Math.floor(i / per) % seq] === 1;
}

for (const name of CASES) {
  test(`${name}: logits and loss equal transformers, with and without padding`, async (t) => {
    const ref = reference(name);
    const model = await Model.fromPretrained(modelDir(name), { device: DEVICE });
    t.is(model.task, ref.task);
    t.deepEqual(model.newlyInitialized, []);
    for (const [variant, rows] of [
      ['padded', 3],
      ['unpadded', 1],
    ] as const) {
      const r = ref[variant];
      const labels =
        ref.task === 'sequence-classification'
          ? CLASS_LABELS.slice(0, rows)
          : ref.task === 'feature-extraction'
            ? undefined
            : LM_LABELS.slice(0, rows);
      const out = await model.forward({ inputIds: INPUT_IDS.slice(0, rows), attentionMask: ATTENTION_MASK.slice(0, rows), labels });
      t.deepEqual(out.logits.shape, r.shape);
      const want = r.logits ?? r.last_hidden_state;
      const err = relError(out.logits.data, want, realPositions(r.shape, ATTENTION_MASK.slice(0, rows), ref.task));
      t.log(`${variant}: max relative error ${err.toExponential(2)}`);
      t.true(err < 1e-4, `${variant} logits relative error ${err}`);
      if (r.loss !== undefined) {
        const lossErr = Math.abs(out.loss! - r.loss) / Math.abs(r.loss);
        t.true(lossErr < 1e-5, `${variant} loss ${out.loss} vs ${r.loss}`);
      }
    }
    model.dispose();
  });
}
