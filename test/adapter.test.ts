import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { Adapter, AdamW, Model } from '../lib';
import {
  adapterTensors,
  DEVICE,
  expectGradients,
  fullBatch,
  modelDir,
  python,
  realPosition,
  relError,
  savedParams,
  tmpDir,
} from './helpers';

const CASES = [
  { name: 'gpt2-seq-cls', classify: true, sites: 2 },
  { name: 'llama-causal-lm', classify: false, sites: 2 },
  { name: 'distilbert-seq-cls', classify: true, sites: 2 },
  { name: 'bert-seq-cls', classify: true, sites: 2 },
];
const ROWS = [0, 1, 2];
const batchFor = fullBatch;
const valid = realPosition;

for (const c of CASES) {
  test(`Houlsby adapters on ${c.name}: identity at start; logits, loss and gradients equal a PyTorch reference; file round trip`, async (t) => {
    const model = await Model.fromPretrained(modelDir(c.name), { device: DEVICE });
    const batch = batchFor(c.classify);
    const bare = await model.forward(batch);
    const base = await savedParams(model);
    await new Adapter({ bottleneckSize: 4, nonlinearity: 'gelu', seed: 5 }).apply(model);
    const layers = Number(model.config.n_layer ?? model.config.n_layers ?? model.config.num_hidden_layers);
    const sites = new Set(
      model
        .parameters()
        .filter((p) => p.name.includes('.adapter.'))
        .map((p) => p.name.split('.adapter.')[0]),
    );
    t.is(sites.size, c.sites * layers, 'after attention and feed-forward of every block');
    const start = await model.forward(batch);
    t.true(relError(start.logits.data, bare.logits.data, valid(bare.logits.shape)) < 1e-6, 'identity at initialisation');
    // Train a little so that up != 0 and every tensor has a gradient; then compare one more step with the reference.
    const opt = new AdamW(model, { lr: 1e-2 });
    for (let i = 0; i < 2; i++) {
      await model.backward(batch);
      await opt.step();
      await opt.zeroGrad();
    }
    const dir = tmpDir('houlsby');
    const before = await adapterTensors(model, dir);
    t.is(JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8')).peft_type, 'TUNEKIT_HOULSBY_ADAPTER');
    const ref = python('houlsby.py', [modelDir(c.name), dir, JSON.stringify(ROWS)]);
    const out = await model.forward(batch);
    t.true(
      relError(out.logits.data, ref.logits, valid(ref.shape)) < 1e-5,
      `logits ${relError(out.logits.data, ref.logits, valid(ref.shape))}`,
    );
    t.true(Math.abs(out.loss! - ref.loss) / Math.abs(ref.loss) < 1e-5);
    await expectGradients(t, model, batch, before, ref.grads, /\.(adapter|modules_to_save)\./);
    // Reloaded into a fresh base, the saved adapter gives the same logits; the base weights never moved.
    const again = await Model.fromPretrained(modelDir(c.name), { device: DEVICE });
    await again.loadAdapter(dir);
    const reloaded = await again.forward(batch);
    const drift = relError(reloaded.logits.data, out.logits.data, valid(ref.shape));
    t.true(drift < 1e-6, `reloaded logits differ from the trained model's by ${drift}`);
    const now = await savedParams(model);
    for (const [n, w] of base) t.deepEqual(now.get(n), w, `${n} is frozen`);
    model.dispose();
    again.dispose();
  });
}
