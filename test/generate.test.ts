import path from 'node:path';
import test from 'ava';
import { LoRA, Model, PrefixTuning, PromptTuning, Tokenizer } from '../lib';
import { DEVICE, modelDir, python, ROOT } from './helpers';

test('greedy generation with the KV cache equals transformers generate() on tiny-gpt2', async (t) => {
  const dir = path.join(ROOT, 'models', 'tiny-gpt2');
  const model = await Model.fromPretrained(dir, { device: DEVICE });
  const tok = await Tokenizer.fromPretrained(dir);
  const ids = tok.encode('The President of the United States said that the');
  const ref = python('generate.py', [dir, JSON.stringify(ids), '40']);
  const [mine] = await model.generate({ inputIds: [ids] }, { maxNewTokens: 40 });
  t.deepEqual(mine, ref.ids);
  model.dispose();
});

test('qwen2: greedy generation with the KV cache equals transformers generate()', async (t) => {
  const model = await Model.fromPretrained(modelDir('qwen2-causal-lm'), { device: DEVICE });
  const ids = [5, 17, 33, 2, 90, 41];
  const ref = python('generate.py', [modelDir('qwen2-causal-lm'), JSON.stringify(ids), '12']);
  const [mine] = await model.generate({ inputIds: [ids] }, { maxNewTokens: 12 });
  t.deepEqual(mine, ref.ids);
  model.dispose();
});

// Left padding, adapters that add positions, and sampling: the cache must change nothing but the cost.
for (const name of ['gpt2-causal-lm', 'llama-causal-lm', 'qwen2-causal-lm']) {
  test(`${name}: generation with and without the KV cache agree (padding, LoRA, prefix, prompt, sampling)`, async (t) => {
    const batch = {
      inputIds: [
        [5, 17, 33, 2, 90],
        [0, 0, 44, 12, 70],
      ],
      attentionMask: [
        [1, 1, 1, 1, 1],
        [0, 0, 1, 1, 1],
      ],
    };
    const setups: [string, ((m: Model) => Promise<void>) | null][] = [
      ['bare', null],
      ['lora', (m) => new LoRA({ r: 2, seed: 1, targetModules: name.startsWith('gpt2') ? ['c_attn'] : ['q_proj', 'v_proj'] }).apply(m)],
      ['prefix', (m) => new PrefixTuning({ numVirtualTokens: 3, seed: 2 }).apply(m)],
      ['prompt', (m) => new PromptTuning({ numVirtualTokens: 2, seed: 3 }).apply(m)],
    ];
    for (const [label, setup] of setups) {
      const model = await Model.fromPretrained(modelDir(name), { device: DEVICE });
      if (setup) await setup(model);
      const opts = { maxNewTokens: 6, eosTokenId: -1 };
      const cached = await model.generate(batch, opts);
      const full = await model.generate(batch, { ...opts, useCache: false });
      t.deepEqual(cached, full, label);
      const s1 = await model.generate(batch, { ...opts, temperature: 0.9, topK: 20, seed: 7 });
      const s2 = await model.generate(batch, { ...opts, temperature: 0.9, topK: 20, seed: 7, useCache: false });
      t.deepEqual(s1, s2, `${label}, sampling`);
      model.dispose();
    }
  });
}
