// tunekit's main job end to end, with nothing to download: build a small GPT-2 over bytes, train it on a text,
// watch the loss fall, save it in Hugging Face format, reload it and let it continue a prompt.
// Run: npm run demo  [-- --steps 150 --out /tmp/tunekit-demo]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { AdamW, Example, Model, Trainer } from '../lib';

const { values: flags } = parseArgs({
  options: { steps: { type: 'string', default: '150' }, out: { type: 'string', default: path.join(os.tmpdir(), 'tunekit-demo') } },
});
const steps = Number(flags.steps);
const out = flags.out;

// The licence texts that ship with this checkout's dependencies: real English, always on disk.
const text = ['typescript', 'ava', 'node-addon-api', 'cmake-js', 'tsx']
  .map((p) => path.join(__dirname, '..', 'node_modules', p, 'LICENSE'))
  .concat(path.join(__dirname, '..', 'README.md'))
  .filter((f) => fs.existsSync(f))
  .map((f) => fs.readFileSync(f, 'latin1'))
  .join('\n')
  .replace(/[^\x20-\x7e\n]/g, ' ');
const bytes = Array.from(Buffer.from(text, 'latin1'));
const seq = 64;
const data: Example[] = [];
for (let i = 0; i + seq < bytes.length; i += seq / 2) data.push({ inputIds: bytes.slice(i, i + seq) });
const evalSet = data.filter((_, i) => i % 20 === 0);
const trainSet = data.filter((_, i) => i % 20 !== 0);

async function main() {
  const config = {
    model_type: 'gpt2',
    architectures: ['GPT2LMHeadModel'],
    vocab_size: 256,
    n_positions: 128,
    n_embd: 128,
    n_layer: 4,
    n_head: 4,
    resid_pdrop: 0,
    embd_pdrop: 0,
    attn_pdrop: 0,
    bos_token_id: 10,
    eos_token_id: 10,
  };
  const model = await Model.fromConfig(config, { seed: 0 });
  console.log(
    `gpt2 over bytes: ${model.countParameters().toLocaleString()} parameters; ${trainSet.length} training windows of ${seq} bytes`,
  );
  const optimizer = new AdamW(model, { lr: 2e-3, weightDecay: 0.01, schedule: { type: 'cosine', warmupSteps: 10 } });
  const trainer = new Trainer(model, {
    optimizer,
    batchSize: 16,
    epochs: 100,
    maxSteps: steps,
    maxGradNorm: 1.0,
    evalEvery: 50,
    seed: 0,
    onProgress: (p) => {
      if (p.step % 10 === 0 || p.step === 1) {
        const ev = p.evalLoss !== undefined ? `  eval loss ${p.evalLoss.toFixed(3)}` : '';
        console.log(
          `step ${String(p.step).padStart(4)}/${p.totalSteps}  loss ${p.loss.toFixed(3)}  lr ${p.lr.toExponential(2)}  ${Math.round(p.tokensPerSecond)} tok/s${ev}`,
        );
      }
    },
  });
  const before = await trainer.evaluate(evalSet);
  const result = await trainer.train(trainSet, { evalSet });
  console.log(
    `held-out loss ${before.loss.toFixed(3)} -> ${result.eval!.loss.toFixed(3)} (uniform guess: ${Math.log(256).toFixed(3)}) in ${(result.wallTimeMs / 1000).toFixed(1)} s`,
  );
  await model.savePretrained(out);
  const reloaded = await Model.fromPretrained(out);
  const prompt = Array.from(Buffer.from('The software is provided '));
  const [ids] = await reloaded.generate({ inputIds: [prompt] }, { maxNewTokens: 48 });
  console.log(`saved to ${out}; continuation: ${JSON.stringify(Buffer.from(ids).toString('latin1'))}`);
  model.dispose();
  reloaded.dispose();
}

main().catch((e) => {
  console.error(`tunekit demo: ${e.code ?? ''} ${e.message}`);
  process.exit(1);
});
