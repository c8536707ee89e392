// Child process of runtime.test.ts: a few AdamW steps on a seeded gpt2 large enough that its activations pass through
// the caching allocator (>= 64 KiB) and oneDNN, printing the losses, the final gradient norm and the runtime's state.
import { AdamW, Model, runtimeInfo } from '../../lib';

export const CONFIG = {
  model_type: 'gpt2',
  vocab_size: 512,
  n_positions: 64,
  n_embd: 128,
  n_layer: 2,
  n_head: 4,
  resid_pdrop: 0,
  embd_pdrop: 0,
  attn_pdrop: 0,
  pad_token_id: 0,
};

export async function trainSteps(steps: number) {
  const model = await Model.fromConfig(CONFIG, { task: 'causal-lm', seed: 3 });
  await model.train();
  const opt = new AdamW(model, { lr: 1e-3, maxGradNorm: 1.0 });
  const inputIds = Array.from({ length: 4 }, (_, i) => Array.from({ length: 48 }, (_, j) => ((i * 131 + j * 17) % 511) + 1));
  const losses: number[] = [];
  const misses: number[] = [];
  let gradNorm = 0;
  for (let s = 0; s < steps; s++) {
    const { loss } = await model.backward({ inputIds, labels: inputIds });
    losses.push(loss);
    gradNorm = (await opt.step()).gradNorm;
    await opt.zeroGrad();
    misses.push(runtimeInfo().cpuCache.misses);
  }
  model.dispose();
  return { losses, gradNorm, misses, info: runtimeInfo() };
}

if (require.main === module) {
  trainSteps(Number(process.argv[2] ?? 4)).then(
    (r) => console.log(JSON.stringify(r)),
    (e) => {
      console.error(e.message);
      process.exit(1);
    },
  );
}
