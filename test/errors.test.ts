// Bad input gets a TunekitError with a code; the process survives and the model stays usable.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { AdamW, Model, TunekitError } from '../lib';
import { addon } from '../lib/native';
import { ATTENTION_MASK, INPUT_IDS, LM_LABELS, modelDir, savedParams, tmpDir } from './helpers';

const SOURCE = () => modelDir('gpt2-causal-lm');

/** A copy of the tiny gpt2 folder whose safetensors header (or bytes) `edit` may rewrite. */
function corrupted(
  edit: (header: Record<string, any>, data: Buffer) => { header?: Record<string, any>; data?: Buffer; raw?: Buffer },
): string {
  const dir = tmpDir('bad');
  fs.copyFileSync(path.join(SOURCE(), 'config.json'), path.join(dir, 'config.json'));
  const buf = fs.readFileSync(path.join(SOURCE(), 'model.safetensors'));
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const r = edit(header, buf.subarray(8 + n));
  let out = r.raw;
  if (!out) {
    const h = Buffer.from(JSON.stringify(r.header ?? header));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(h.length));
    out = Buffer.concat([len, h, r.data ?? buf.subarray(8 + n)]);
  }
  fs.writeFileSync(path.join(dir, 'model.safetensors'), out);
  return dir;
}

async function rejectsWith(t: any, p: Promise<unknown>, code: string, pattern?: RegExp) {
  const e = await t.throwsAsync(p, { instanceOf: TunekitError });
  t.is(e.code, code, e.message);
  if (pattern) t.regex(e.message, pattern);
}

test('missing folder, config or weights: E_FILE', async (t) => {
  await rejectsWith(t, Model.fromPretrained('/nonexistent/tunekit'), 'E_FILE', /does not exist/);
  const dir = tmpDir('empty');
  await rejectsWith(t, Model.fromPretrained(dir), 'E_FILE', /config\.json/);
  fs.copyFileSync(path.join(SOURCE(), 'config.json'), path.join(dir, 'config.json'));
  await rejectsWith(t, Model.fromPretrained(dir), 'E_FILE', /model\.safetensors/);
});

test('truncated model.safetensors: E_FORMAT naming the tensor', async (t) => {
  const dir = corrupted((_h, _d) => {
    const buf = fs.readFileSync(path.join(SOURCE(), 'model.safetensors'));
    return { raw: buf.subarray(0, buf.length - 100) };
  });
  await rejectsWith(t, Model.fromPretrained(dir), 'E_FORMAT', /past the end|truncated/);
  const tiny = corrupted(() => ({ raw: Buffer.from([1, 2, 3]) }));
  await rejectsWith(t, Model.fromPretrained(tiny), 'E_FORMAT', /too short/);
});

test('a header that lies: offsets past the end, overlap, wrong dtype, huge header length', async (t) => {
  const past = corrupted((h) => {
    const k = 'transformer.wte.weight';
    const [b, e] = h[k].data_offsets;
    h[k].data_offsets = [b + 1e6, e + 1e6];
    return { header: h };
  });
  await rejectsWith(t, Model.fromPretrained(past), 'E_FORMAT', /past the end/);
  const overlap = corrupted((h) => {
    const names = Object.keys(h).filter((k) => k !== '__metadata__' && h[k].shape.length === 1);
    const [a, b] = [h[names[0]], h[names[1]]];
    if (a.data_offsets[1] - a.data_offsets[0] === b.data_offsets[1] - b.data_offsets[0]) b.data_offsets = [...a.data_offsets];
    else b.data_offsets = [a.data_offsets[0], a.data_offsets[0] + (b.data_offsets[1] - b.data_offsets[0])];
    return { header: h };
  });
  await rejectsWith(t, Model.fromPretrained(overlap), 'E_FORMAT', /overlap/);
  const badType = corrupted((h) => {
    h['transformer.ln_f.bias'].dtype = 'F99';
    return { header: h };
  });
  await rejectsWith(t, Model.fromPretrained(badType), 'E_FORMAT', /unknown dtype/);
  const sizeMismatch = corrupted((h) => {
    h['transformer.ln_f.bias'].dtype = 'F16';
    return { header: h };
  });
  await rejectsWith(t, Model.fromPretrained(sizeMismatch), 'E_FORMAT', /needs/);
  const unsupported = corrupted((h) => {
    h['transformer.ln_f.bias'].dtype = 'I32';
    return { header: h };
  });
  await rejectsWith(t, Model.fromPretrained(unsupported), 'E_FORMAT', /unsupported safetensors dtype/);
  const huge = corrupted(() => {
    const b = Buffer.alloc(64);
    b.writeBigUInt64LE(1n << 40n);
    return { raw: b };
  });
  await rejectsWith(t, Model.fromPretrained(huge), 'E_FORMAT', /header length .* larger than the file/);
  const notJson = corrupted(() => {
    const b = Buffer.alloc(24, 0x7b);
    b.writeBigUInt64LE(8n);
    return { raw: b };
  });
  await rejectsWith(t, Model.fromPretrained(notJson), 'E_FORMAT', /not valid JSON/);
});

test('a tensor whose shape disagrees with config.json: E_SHAPE; unknown model_type: E_CONFIG', async (t) => {
  const dir = corrupted((h) => ({ header: h }));
  const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, n_positions: 40 }));
  await rejectsWith(t, Model.fromPretrained(dir), 'E_SHAPE', /wpe\.weight.*\[32, 32\].*\[40, 32\]/);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...config, model_type: 'bloom' }));
  await rejectsWith(t, Model.fromPretrained(dir), 'E_CONFIG', /unknown model_type "bloom"/);
  fs.writeFileSync(path.join(dir, 'config.json'), '{ not json');
  await rejectsWith(t, Model.fromPretrained(dir), 'E_FORMAT', /config\.json/);
});

test('bad batches are refused and the model stays usable', async (t) => {
  const model = await Model.fromPretrained(SOURCE());
  const good = { inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK };
  const reference = await model.forward(good);
  await rejectsWith(t, model.forward({ inputIds: [[1, 2, 96]] }), 'E_RANGE', /outside the vocabulary/);
  await rejectsWith(t, model.forward({ inputIds: [[1, -2, 3]] }), 'E_RANGE');
  await rejectsWith(t, model.forward({ inputIds: [[1, 2, 3]], attentionMask: [[1, 1]] }), 'E_SHAPE');
  await rejectsWith(
    t,
    model.forward({
      inputIds: [
        [1, 2, 3],
        [1, 2],
      ],
    }),
    'E_SHAPE',
  );
  await rejectsWith(t, model.forward({ inputIds: 'hello' as any }), 'E_TYPE');
  await rejectsWith(t, model.forward({ inputIds: [['a', 'b']] as any }), 'E_TYPE');
  await rejectsWith(t, model.forward({ inputIds: [[1, 2]], labels: [[1, 200]] }), 'E_RANGE', /labels/);
  await rejectsWith(t, model.forward({ inputIds: [new Array(33).fill(1)] }), 'E_RANGE', /max_position/);
  const after = await model.forward(good);
  t.deepEqual(after.logits.data, reference.logits.data);
  model.dispose();
  await rejectsWith(t, model.forward(good), 'E_DISPOSED');
});

test('wrong JS types passed straight to the addon: TypeError with E_TYPE, no crash', async (t) => {
  const model = await Model.fromPretrained(SOURCE());
  const h = model.nativeHandle;
  const calls: (() => unknown)[] = [
    () => addon.forward(h, { batch: 1, seq: 3, inputIds: 'abc' as any }, true),
    () => addon.forward(h, { batch: 1, seq: 3, inputIds: new Float32Array(3) as any }, true),
    () => addon.forward('not a handle' as any, { batch: 1, seq: 1, inputIds: new Int32Array(1) }, true),
    () => addon.forward(h, null as any, true),
    () => addon.backward(h, { batch: 1, seq: 1, inputIds: new Int32Array(1) }, 'x' as any),
    () => addon.loadSafetensors(h, 42 as any, []),
    () => addon.setRngState('x' as any),
  ];
  for (const call of calls) {
    const e = await t.throwsAsync(async () => call());
    t.is((e as any).code, 'E_TYPE', String(e));
  }
  // The raw addon checks sizes too, not only the TS layer.
  const e = await t.throwsAsync(addon.forward(h, { batch: 2, seq: 3, inputIds: new Int32Array(3) }, true));
  t.is((e as any).code, 'E_SHAPE');
  const ok = await model.forward({ inputIds: [[1, 2, 3]] });
  t.deepEqual(ok.logits.shape, [1, 3, 96]);
  model.dispose();
});

test('a NaN or infinite loss is refused and leaves the weights unchanged', async (t) => {
  const model = await Model.fromPretrained(SOURCE());
  await model.train();
  const opt = new AdamW(model, { lr: 1e-2 });
  const before = await savedParams(model);
  // Every label ignored: the mean over zero tokens is NaN.
  const allIgnored = INPUT_IDS.map((r) => r.map(() => -100));
  await rejectsWith(t, model.backward({ inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK, labels: allIgnored }), 'E_NAN', /loss is NaN/);
  t.is(await model.gradNorm(), 0, 'no gradient was accumulated');
  const r = await opt.step();
  t.is(r.gradNorm, 0);
  t.deepEqual(await savedParams(model), before);

  // A checkpoint holding an infinite weight gives a non-finite loss the same way.
  const dir = corrupted((h, data) => {
    const copy = Buffer.from(data);
    const [b] = h['transformer.ln_f.weight'].data_offsets;
    copy.writeFloatLE(Infinity, b);
    return { header: h, data: copy };
  });
  const broken = await Model.fromPretrained(dir);
  await rejectsWith(t, broken.backward({ inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK, labels: LM_LABELS }), 'E_NAN');
  broken.dispose();

  // The model still trains normally afterwards.
  const { loss } = await model.backward({ inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK, labels: LM_LABELS });
  t.true(Number.isFinite(loss));
  model.dispose();
});

test("device 'cuda' on a CPU-only libtorch is a clear error", async (t) => {
  if (addon.cudaAvailable()) {
    const m = await Model.fromPretrained(SOURCE(), { device: 'cuda' });
    t.is(m.device, 'cuda');
    m.dispose();
    return;
  }
  await rejectsWith(t, Model.fromPretrained(SOURCE(), { device: 'cuda' }), 'E_DEVICE', /CUDA/);
  await rejectsWith(t, Model.fromPretrained(SOURCE(), { device: 'tpu' as any }), 'E_ARG');
});
