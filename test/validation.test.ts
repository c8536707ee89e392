// Bad input to the public API returns or throws a TunekitError, never crashes the process, and leaves the weights as
// they were: property-based runs (fast-check, seeded) over random values, then each defect the adversarial run found.
import test from 'ava';
import fc from 'fast-check';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { AdamW, FinetuneAll, LoRA, Model, SGD, Tokenizer, Trainer, TunekitError } from '../lib';
import { activationBytes } from '../lib/memory';
import { LM_LABELS, INPUT_IDS, ATTENTION_MASK, modelDir, savedParams, tmpDir } from './helpers';

const SEED = 20261128;

/** Runs `f`; a throw must be a TunekitError (anything else fails the property). */
async function returnsOrTunekitError(f: () => unknown): Promise<boolean> {
  try {
    await f();
    return true;
  } catch (e) {
    if (e instanceof TunekitError) return true;
    throw e;
  }
}

async function code(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    if (!(e instanceof TunekitError)) throw e;
    return `${e.code}: ${e.message}`;
  }
  return 'no error';
}

/** Values an adversarial caller passes: every JS type, and the numbers that break arithmetic. */
const nasty = fc.oneof(
  fc.anything(),
  fc.constantFrom(NaN, Infinity, -Infinity, -1, 0, 0.5, -0.5, 1e9, 2 ** 32, 1n, null, undefined, '1', [], {}),
  fc.integer({ min: -3, max: 300 }),
);

const sameTensors = (t: any, a: Map<string, Float32Array>, b: Map<string, Float32Array>) => {
  t.deepEqual([...a.keys()], [...b.keys()]);
  for (const [k, v] of a) t.true(Buffer.from(v.buffer).equals(Buffer.from(b.get(k)!.buffer)), k);
};

test('property: random batches to forward, backward, embed and generate throw TunekitErrors and leave the weights alone', async (t) => {
  const model = await Model.fromPretrained(modelDir('gpt2-causal-lm'));
  const before = await savedParams(model);
  // Rows of token-like values with holes, BigInts, NaNs and out-of-range ids mixed in.
  const row = fc.array(fc.oneof(fc.integer({ min: -2, max: 80 }), nasty), { minLength: 0, maxLength: 6 });
  const sparse = row.map((r) => {
    const a = [...r];
    if (a.length > 2) delete a[1];
    return a;
  });
  const batch = fc.record(
    {
      inputIds: fc.oneof(fc.array(fc.oneof(row, sparse), { minLength: 0, maxLength: 3 }), nasty),
      attentionMask: fc.oneof(fc.array(row, { maxLength: 3 }), nasty),
      labels: fc.oneof(fc.array(fc.oneof(row, nasty), { maxLength: 3 }), nasty),
    },
    { requiredKeys: [] },
  );
  await fc.assert(
    fc.asyncProperty(batch, fc.constantFrom('forward', 'backward', 'embed', 'generate'), async (b, call) =>
      returnsOrTunekitError(async () => {
        if (call === 'forward') await model.forward(b as any);
        else if (call === 'backward') await model.backward(b as any);
        else if (call === 'embed') await model.embed(b as any);
        else await model.generate(b as any, { maxNewTokens: 2 });
      }),
    ),
    { seed: SEED, numRuns: 300 },
  );
  sameTensors(t, before, await savedParams(model));
  model.dispose();
});

test('property: random options to Model, optimizers, Trainer, generate and strategies: a TunekitError or a valid object', async (t) => {
  const model = await Model.fromPretrained(modelDir('gpt2-causal-lm'));
  const before = await savedParams(model);
  const keys = ['lr', 'weightDecay', 'betas', 'eps', 'momentum', 'dampening', 'nesterov', 'maxGradNorm', 'schedule', 'lrr', 'epochs'];
  const options = fc.dictionary(
    fc.constantFrom(...keys, 'batchSize', 'maxNewTokens', 'temperature', 'topK', 'topP', 'seed', 'task', 'precison'),
    nasty,
    {
      maxKeys: 3,
    },
  );
  await fc.assert(
    fc.asyncProperty(options, fc.constantFrom('adamw', 'sgd', 'trainer', 'generate', 'fromPretrained', 'strategy'), async (o, what) =>
      returnsOrTunekitError(async () => {
        if (what === 'adamw') new AdamW(model, o as any);
        else if (what === 'sgd') new SGD(model, o as any);
        else if (what === 'trainer') new Trainer(model, { optimizer: new AdamW(model), ...(o as any) });
        else if (what === 'generate') await model.generate({ inputIds: [[1, 2, 3]] }, o as any);
        else if (what === 'strategy') new FinetuneAll(o as any);
        else (await Model.fromPretrained(modelDir('gpt2-causal-lm'), o as any)).dispose();
      }),
    ),
    { seed: SEED, numRuns: 300 },
  );
  sameTensors(t, before, await savedParams(model));
  model.dispose();
});

test('property: a llama config with any one field changed gives a working model or E_CONFIG, never a crash', async (t) => {
  const base = {
    model_type: 'llama',
    vocab_size: 64,
    hidden_size: 32,
    num_hidden_layers: 1,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    intermediate_size: 64,
    max_position_embeddings: 32,
  };
  const small = fc.oneof(fc.integer({ min: -2, max: 64 }), fc.constantFrom(0.5, NaN, Infinity, null, '2', true, [2], {}));
  let refused = 0;
  await fc.assert(
    fc.asyncProperty(fc.constantFrom(...Object.keys(base).slice(1), 'head_dim', 'rms_norm_eps', 'rope_theta'), small, async (k, v) => {
      try {
        const m = await Model.fromConfig({ ...base, [k]: v } as any);
        const out = await m.forward({ inputIds: [[1, 2, 3]] });
        m.dispose();
        return out.logits.data.every(Number.isFinite);
      } catch (e) {
        if (!(e instanceof TunekitError)) throw e;
        refused++;
        return ['E_CONFIG', 'E_RANGE'].includes(e.code);
      }
    }),
    { seed: SEED, numRuns: 200 },
  );
  t.true(refused > 0);
});

test('num_key_value_heads 0, 0.5, more than the heads or not dividing them: E_CONFIG naming the field, from a config and from disk', async (t) => {
  const src = modelDir('llama-base');
  const config = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8'));
  for (const kv of [0, 0.5, 8, 3]) {
    t.regex(await code(Model.fromConfig({ ...config, num_key_value_heads: kv })), /^E_CONFIG: .*num_key_value_heads/);
    const dir = tmpDir('kv');
    fs.copyFileSync(path.join(src, 'model.safetensors'), path.join(dir, 'model.safetensors'));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, num_key_value_heads: kv }));
    t.regex(await code(Model.fromPretrained(dir)), /^E_CONFIG: .*num_key_value_heads/);
  }
});

test('a checkpoint with more layers than config.json says is E_FORMAT; an unused head is listed, as transformers warns', async (t) => {
  const src = modelDir('gpt2-causal-lm');
  const config = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8'));
  const dir = tmpDir('layers');
  fs.copyFileSync(path.join(src, 'model.safetensors'), path.join(dir, 'model.safetensors'));
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, n_layer: config.n_layer - 1 }));
  t.regex(await code(Model.fromPretrained(dir)), /^E_FORMAT: .*backbone tensors config\.json does not account for \(transformer\.h\.1\./);
  const features = await Model.fromPretrained(modelDir('gpt2-seq-cls'), { task: 'feature-extraction' });
  t.deepEqual(features.unusedWeights, ['score.weight']);
  features.dispose();
});

test('E_MEMORY: a job whose activations exceed the limit is refused before it runs, naming estimate, limit and remedy', async (t) => {
  const model = await Model.fromConfig({ model_type: 'gpt2', vocab_size: 8192, n_positions: 1024, n_embd: 32, n_layer: 1, n_head: 2 });
  const ids = (b: number, s: number) => Array.from({ length: b }, () => new Array(s).fill(1));
  const saved = process.env.TUNEKIT_MAX_MEMORY_MB;
  process.env.TUNEKIT_MAX_MEMORY_MB = '16384';
  try {
    // 512 x 1024 tokens of 8192-way logits alone are 16 GiB, twice with their log-softmax.
    t.regex(
      await code(model.forward({ inputIds: ids(512, 1024) })),
      /^E_MEMORY: this forward of 512 x 1024 tokens needs about [\d.]+ GiB .* 16\.00 GiB TUNEKIT_MAX_MEMORY_MB allows/,
    );
    t.regex(
      await code(model.backward({ inputIds: ids(256, 1024), labels: ids(256, 1024) })),
      /^E_MEMORY: this backward .*lower the batch size/,
    );
    t.regex(await code(model.generate({ inputIds: ids(4096, 512) }, { maxNewTokens: 512 })), /^E_MEMORY: this generate/);
    t.is(await code(model.forward({ inputIds: ids(2, 16) })), 'no error');
    process.env.TUNEKIT_MAX_MEMORY_MB = 'lots';
    t.regex(await code(model.forward({ inputIds: ids(2, 16) })), /^E_ARG: TUNEKIT_MAX_MEMORY_MB/);
  } finally {
    if (saved === undefined) delete process.env.TUNEKIT_MAX_MEMORY_MB;
    else process.env.TUNEKIT_MAX_MEMORY_MB = saved;
  }
  // The estimate grows with every term it counts.
  const d = model.dims;
  t.true(activationBytes(d, 'backward', 8, 128) > activationBytes(d, 'forward', 8, 128));
  t.true(activationBytes(d, 'forward', 8, 256) > 2 * activationBytes(d, 'forward', 8, 128));
  model.dispose();
});

test('optimizer hyper-parameters are validated, unknown option names anywhere are E_ARG naming the option', async (t) => {
  const model = await Model.fromPretrained(modelDir('gpt2-causal-lm'));
  const cases: [() => unknown, RegExp][] = [
    [() => new AdamW(model, { betas: [NaN, 2] }), /^E_ARG: betas\[0\]/],
    [() => new AdamW(model, { betas: [0.9, 2] }), /^E_ARG: betas\[1\]/],
    [() => new AdamW(model, { eps: -1 }), /^E_ARG: eps/],
    [() => new AdamW(model, { weightDecay: Infinity }), /^E_ARG: weightDecay/],
    [() => new AdamW(model, { schedule: { type: 'linear', totalSteps: -3 } }), /^E_ARG: schedule\.totalSteps/],
    [() => new SGD(model, { momentum: NaN }), /^E_ARG: momentum/],
    [() => new SGD(model, { nesterov: true }), /^E_ARG: nesterov/],
    [() => new AdamW(model, { learningRate: 1 } as any), /^E_ARG: AdamW: unknown option 'learningRate'/],
    [() => Model.fromPretrained(modelDir('gpt2-causal-lm'), { precison: '32-true' } as any), /unknown option 'precison'/],
    [() => new Trainer(model, { optimizer: new AdamW(model), batchsize: 4 } as any), /^E_ARG: Trainer: unknown option 'batchsize'/],
    [() => new FinetuneAll({ epoch: 2 } as any), /^E_ARG: FinetuneAll: unknown option 'epoch'/],
    [() => new LoRA({ rank: 4 } as any).apply(model), /^E_ARG: LoRA: unknown option 'rank'/],
    [() => model.generate({ inputIds: [[1]] }, { max_new_tokens: 3 } as any), /unknown option 'max_new_tokens'/],
    [() => model.forward({ inputIds: [[1]] }, { logit: false } as any), /unknown option 'logit'/],
    [() => model.savePretrained(tmpDir('x'), { adapters: true } as any), /unknown option 'adapters'/],
  ];
  for (const [f, want] of cases) t.regex(await code(f), want);
  model.dispose();
});

test('sparse arrays, BigInts, fractional labels and bad maxNewTokens are named errors', async (t) => {
  const lm = await Model.fromPretrained(modelDir('gpt2-causal-lm'));
  t.regex(await code(lm.forward({ inputIds: [[1, , 3] as number[]] })), /^E_TYPE: inputIds\[0\]\[1\] must be an integer, got a hole/);
  t.regex(await code(lm.forward({ inputIds: [[1n, 2] as any] })), /^E_TYPE: inputIds\[0\]\[0\] must be an integer, got 1n/);
  for (const n of [NaN, Infinity, -5, 0])
    t.regex(await code(lm.generate({ inputIds: [[1, 2]] }, { maxNewTokens: n })), /^E_ARG: maxNewTokens/);
  t.regex(
    await code(lm.generate({ inputIds: [[1, 2]] }, { maxNewTokens: 1e9 })),
    /^E_RANGE: the prompt \(2 tokens\) plus maxNewTokens \(1000000000\) exceeds the model's context of \d+ positions/,
  );
  lm.dispose();
  const cls = await Model.fromPretrained(modelDir('gpt2-seq-cls'));
  for (const l of [0.5, 2.9, -0.5])
    t.regex(await code(cls.backward({ inputIds: [[1, 2]], labels: [l] })), /^E_RANGE: labels\[0\] = .* is not a class id/);
  cls.dispose();
});

test('optimizers have dispose(); disposing the model disposes its optimizers', async (t) => {
  const model = await Model.fromPretrained(modelDir('gpt2-causal-lm'));
  const a = new AdamW(model);
  await model.backward({ inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK, labels: LM_LABELS });
  await a.step();
  a.dispose();
  t.regex(await code(a.step()), /^E_DISPOSED: this optimizer was disposed/);
  const b = new AdamW(model);
  await model.backward({ inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK, labels: LM_LABELS });
  await b.step();
  model.dispose();
  t.regex(await code(b.step()), /^E_DISPOSED/);
});

test('adapter_config.json fields are type- and range-checked; missing adapter tensors are E_FORMAT; a merge that would give NaN changes nothing', async (t) => {
  const model = await Model.fromPretrained(modelDir('gpt2-causal-lm'));
  await new LoRA({ r: 2, alpha: 4 }).apply(model);
  const opt = new AdamW(model, { lr: 0.1 });
  await model.backward({ inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK, labels: LM_LABELS });
  await opt.step();
  const dir = tmpDir('lora');
  await model.saveAdapter(dir);
  model.dispose();
  const config = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
  const variant = (edit: Record<string, unknown>, weights?: Buffer) => {
    const d = tmpDir('lora-variant');
    fs.writeFileSync(path.join(d, 'adapter_config.json'), JSON.stringify({ ...config, ...edit }));
    if (weights) fs.writeFileSync(path.join(d, 'adapter_model.safetensors'), weights);
    else fs.copyFileSync(path.join(dir, 'adapter_model.safetensors'), path.join(d, 'adapter_model.safetensors'));
    return d;
  };
  const fresh = () => Model.fromPretrained(modelDir('gpt2-causal-lm'));
  const m = await fresh();
  for (const [edit, want] of [
    [{ lora_alpha: 'sixteen' }, /lora_alpha must be a finite number > 0, got "sixteen"/],
    [{ lora_alpha: -1 }, /lora_alpha must be > 0/],
    [{ lora_dropout: 1.5 }, /lora_dropout must be/],
    [{ use_rslora: 'yes' }, /use_rslora must be true or false/],
    [{ target_modules: 7 }, /target_modules must be a list/],
    [{ modules_to_save: 'score' }, /modules_to_save must be a list/],
  ] as [Record<string, unknown>, RegExp][]) {
    const e = await code(m.loadAdapter(variant(edit)));
    t.regex(e, /^E_FORMAT: .*adapter_config\.json: /);
    t.regex(e, want);
  }
  t.deepEqual(m.adapters, []);
  // The same file without its lora_A tensors.
  const buf = fs.readFileSync(path.join(dir, 'adapter_model.safetensors'));
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  for (const k of Object.keys(header)) if (k.includes('lora_A')) delete header[k];
  const h = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  t.regex(
    await code(m.loadAdapter(variant({}, Buffer.concat([len, h, buf.subarray(8 + n)])))),
    /^E_FORMAT: .*lacks \d+ of the adapter's tensors: .*lora_A/,
  );
  t.deepEqual(m.adapters, []);
  // alpha 1e308 scales a trained B A past float32: the merge must refuse before touching a weight.
  const before = await savedParams(m);
  await m.loadAdapter(variant({ lora_alpha: 1e308 }));
  t.regex(await code(m.mergeAdapter()), /^E_NAN: merging adapter 'default' would put non-finite values into .*; the weights are unchanged/);
  await m.setAdapter(null);
  sameTensors(t, before, await savedParams(m));
  m.dispose();
});

test('training while an adapter is merged is E_STATE', async (t) => {
  const model = await Model.fromPretrained(modelDir('gpt2-causal-lm'));
  await new LoRA({ r: 2 }).apply(model);
  await model.mergeAdapter();
  t.regex(await code(model.backward({ inputIds: INPUT_IDS, labels: LM_LABELS })), /^E_STATE: adapter 'default' is merged/);
  model.dispose();
});

test('files that are not what their names say: a folder as model.safetensors, a numeric weight_map entry, a tokenizer id of 4e9', async (t) => {
  const src = modelDir('gpt2-causal-lm');
  const dir = tmpDir('folder');
  fs.copyFileSync(path.join(src, 'config.json'), path.join(dir, 'config.json'));
  fs.mkdirSync(path.join(dir, 'model.safetensors'));
  t.regex(await code(Model.fromPretrained(dir)), /^E_FILE: .*model\.safetensors is not a file/);
  const sharded = tmpDir('sharded');
  fs.copyFileSync(path.join(src, 'config.json'), path.join(sharded, 'config.json'));
  fs.writeFileSync(path.join(sharded, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { 'transformer.wte.weight': 1 } }));
  t.regex(await code(Model.fromPretrained(sharded)), /^E_FORMAT: .*weight_map\['transformer\.wte\.weight'\] must be a shard file name/);
  const tok = tmpDir('tok');
  const json = JSON.parse(fs.readFileSync(path.join(modelDir('tokenizer-bpe'), 'tokenizer.json'), 'utf8'));
  const first = Object.keys(json.model.vocab)[5];
  json.model.vocab[first] = 4e9;
  fs.writeFileSync(path.join(tok, 'tokenizer.json'), JSON.stringify(json));
  const start = Date.now();
  t.regex(await code(Tokenizer.fromPretrained(tok)), /^E_FORMAT: .*has id 4000000000, outside the vocabulary's \d+ entries/);
  t.log(`refused in ${Date.now() - start} ms`);
});

test('loading a checkpoint peaks near one copy of the weights, not two', async (t) => {
  // 30M parameters (120 MB): large enough that a second copy could not hide in allocator slack.
  const dir = tmpDir('big');
  const big = await Model.fromConfig({ model_type: 'gpt2', vocab_size: 32768, n_positions: 128, n_embd: 512, n_layer: 4, n_head: 8 });
  await big.savePretrained(dir);
  big.dispose();
  const r = spawnSync(process.execPath, ['--require', 'tsx/cjs', path.join(__dirname, 'scripts', 'load-peak.ts'), dir], {
    encoding: 'utf8',
  });
  t.is(r.status, 0, r.stderr);
  const { bytes, growth } = JSON.parse(r.stdout.trim().split('\n').pop()!);
  t.log(`checkpoint ${(bytes / 2 ** 20).toFixed(0)} MiB, peak RSS grew ${(growth / 2 ** 20).toFixed(0)} MiB`);
  t.true(growth < 1.3 * bytes, `peak grew by ${(growth / bytes).toFixed(2)} x the checkpoint`);
  fs.rmSync(dir, { recursive: true, force: true });
});
