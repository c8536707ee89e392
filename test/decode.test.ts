import test from 'ava';
import { LoRA, Model, PrefixTuning, SGD } from '../lib';
import { DEVICE, modelDir, relError } from './helpers';

/** A LoRA adapter with B moved off zero by one SGD step, so that its term changes the logits. */
async function trainedLoRA(model: Model, name: string, seed: number, targets: string[]): Promise<void> {
  await new LoRA({ r: 2, alpha: 8, targetModules: targets, seed }).apply(model, { adapterName: name });
  const ids = [[3, 9, 27, 81, 40, 12]];
  const opt = new SGD(model, { lr: 0.5 });
  await model.train();
  await model.backward({ inputIds: ids, labels: ids.map((r) => r.map((x) => (x * seed) % 50)) });
  await opt.step();
  await opt.zeroGrad();
  await model.eval();
}

/** The last position's logits of a forward over the whole sequence, through `adapter`. */
async function lastLogits(model: Model, adapter: string | null, ids: number[]): Promise<Float32Array> {
  await model.setAdapter(adapter);
  const out = await model.forward({ inputIds: [ids] });
  const vocab = out.logits.shape[2]!;
  return out.logits.data.slice(out.logits.data.length - vocab);
}

const argmax = (a: Float32Array) => a.reduce((best, x, i) => (x > a[best]! ? i : best), 0);

// A stacked step computes the same float32 products as a forward over each whole sequence, in other reduction orders
// (padded keys, batched rows): agreement to rounding, about 1e-6 relative; 1e-4 leaves a wide margin.
const TOLERANCE = 1e-4;

for (const name of ['gpt2-causal-lm', 'llama-causal-lm', 'qwen2-causal-lm']) {
  test(`${name}: sessions stepped together under different LoRA adapters give each sequence's own logits`, async (t) => {
    const model = await Model.fromPretrained(modelDir(name), { device: DEVICE });
    const targets = name.startsWith('gpt2') ? ['c_attn', 'c_fc'] : ['q_proj', 'v_proj', 'down_proj'];
    await trainedLoRA(model, 'a', 1, targets);
    await trainedLoRA(model, 'b', 2, targets);
    const plan = [
      { adapter: 'a', prompt: [5, 17, 33, 2, 90], joinsAt: 0 },
      { adapter: 'b', prompt: [44, 12, 70, 8, 1, 66, 23, 7, 19], joinsAt: 0 },
      { adapter: null, prompt: [31, 4, 58], joinsAt: 2 }, // joins while the others decode
      { adapter: 'a', prompt: [9, 9, 14, 61], joinsAt: 1 },
    ];
    const seqs = plan.map((p) => ({ ...p, ids: [...p.prompt], session: undefined as any, pending: p.prompt }));
    // The adapters must matter, or the comparison below could not tell rows apart.
    t.true(relError(await lastLogits(model, 'a', plan[0]!.prompt), await lastLogits(model, 'b', plan[0]!.prompt)) > 1e-3);
    for (let step = 0; step < 6; step++) {
      const active = seqs.filter((s) => s.joinsAt <= step);
      for (const s of active) s.session ??= await model.openSession({ adapter: s.adapter });
      const out = await model.decodeStep(
        active.map((s) => s.session),
        active.map((s) => s.pending),
      );
      const vocab = out.shape[1]!;
      t.deepEqual(out.shape, [active.length, vocab]);
      for (const [i, s] of active.entries()) {
        const got = out.data.slice(i * vocab, (i + 1) * vocab);
        const want = await lastLogits(model, s.adapter, s.ids);
        const err = relError(got, want);
        t.true(err < TOLERANCE, `step ${step}, sequence ${seqs.indexOf(s)} (${s.adapter ?? 'base'}): relative error ${err}`);
        const next = argmax(want);
        s.ids.push(next);
        s.pending = [next];
      }
    }
    for (const s of seqs) s.session.dispose();
    model.dispose();
  });
}

test('gpt2: a prefix-tuning session steps beside LoRA ones (one forward per adapter) and matches its own forward', async (t) => {
  const model = await Model.fromPretrained(modelDir('gpt2-causal-lm'), { device: DEVICE });
  await trainedLoRA(model, 'a', 1, ['c_attn']);
  await new PrefixTuning({ numVirtualTokens: 3, seed: 2 }).apply(model, { adapterName: 'p' });
  const seqs = [
    { adapter: 'a', ids: [5, 17, 33] },
    { adapter: 'p', ids: [44, 12, 70, 8] },
  ];
  const sessions = await Promise.all(seqs.map((s) => model.openSession({ adapter: s.adapter })));
  let pending = seqs.map((s) => s.ids);
  for (let step = 0; step < 4; step++) {
    const out = await model.decodeStep(sessions, pending);
    const vocab = out.shape[1]!;
    pending = [];
    for (const [i, s] of seqs.entries()) {
      const want = await lastLogits(model, s.adapter, s.ids);
      const err = relError(out.data.slice(i * vocab, (i + 1) * vocab), want);
      t.true(err < TOLERANCE, `step ${step}, ${s.adapter}: relative error ${err}`);
      s.ids.push(argmax(want));
      pending.push([s.ids.at(-1)!]);
    }
  }
  model.dispose();
});

test('decode sessions: bad input is a clear error', async (t) => {
  const model = await Model.fromPretrained(modelDir('gpt2-causal-lm'), { device: DEVICE });
  await t.throwsAsync(model.openSession({ adapter: 'nope' }), { code: 'E_ARG', message: /no adapter named 'nope'/ } as any);
  const s = await model.openSession();
  await t.throwsAsync(model.decodeStep([s], [[model.dims.vocabSize]]), { code: 'E_RANGE' } as any);
  await t.throwsAsync(model.decodeStep([s, s], [[1], [2]]), { code: 'E_ARG', message: /appears twice/ } as any);
  await t.throwsAsync(model.decodeStep([s], [[1], [2]]), { code: 'E_SHAPE' } as any);
  const long = Array.from({ length: model.dims.maxPositions + 1 }, (_, i) => i % 50);
  await t.throwsAsync(model.decodeStep([s], [long]), { code: 'E_RANGE', message: /exceed the model's context/ } as any);
  s.dispose();
  await t.throwsAsync(model.decodeStep([s], [[1]]), { code: 'E_DISPOSED' } as any);
  model.dispose();
  const classifier = await Model.fromPretrained(modelDir('gpt2-causal-lm'), { task: 'sequence-classification', numLabels: 2 });
  await t.throwsAsync(classifier.openSession(), { code: 'E_STATE', message: /needs a causal-lm model/ } as any);
  classifier.dispose();
});
