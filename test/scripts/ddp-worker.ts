// A worker of test/distributed.test.ts: a few AdamW steps of a seeded gpt2 under the Trainer, writing a checkpoint
// after every step, alone (the reference) or as one rank of a data-parallel group started by tunekit launch.
import path from 'node:path';
import { AdamW, DPO, GRPO, LoRA, Model, PPO, ProcessGroup, Trainer } from '../../lib';
import type { Example } from '../../lib';

export interface WorkerSpec {
  /**
   * 'lm': full finetuning of a causal LM; 'lora': LoRA on a sequence classifier; 'unused': the same with a second,
   * inactive adapter left trainable (parameters no loss reaches); 'dpo': DPO of a LoRA policy; 'grpo', 'ppo': updates
   * on fixed generations (see rlSteps).
   */
  kind: 'lm' | 'lora' | 'unused' | 'dpo' | 'grpo' | 'ppo';
  out: string;
  steps: number;
  batchSize: number;
  gradAccumulation: number;
  /** On the first attempt, this rank kills (SIGKILL) or stops (SIGSTOP) itself after this step. */
  fault?: { rank: number; step: number; signal: 'SIGKILL' | 'SIGSTOP' };
}

const CONFIG = {
  model_type: 'gpt2',
  vocab_size: 64,
  n_positions: 32,
  n_embd: 32,
  n_layer: 2,
  n_head: 4,
  resid_pdrop: 0,
  embd_pdrop: 0,
  attn_pdrop: 0,
  pad_token_id: 0,
};

/**
 * 64 examples. Language-model rows all have 12 tokens, so that the mean of the ranks' per-token means is the mean
 * over the whole batch; classifier rows vary in length (their loss is a mean over rows).
 */
export function examples(kind: WorkerSpec['kind']): Example[] {
  return Array.from({ length: 64 }, (_, i) => {
    const len = kind === 'lm' ? 12 : 4 + (i % 9);
    const inputIds = Array.from({ length: len }, (_, j) => ((i * 37 + j * 11 + ((i * j) % 7)) % 63) + 1);
    return kind === 'lm' ? { inputIds } : { inputIds, label: (i * 5) % 3 === 0 ? 1 : 0 };
  });
}

/** 24 preference pairs of token ids, completions of different lengths. */
function pairs() {
  return Array.from({ length: 24 }, (_, i) => ({
    promptIds: Array.from({ length: 3 + (i % 4) }, (_, j) => ((i * 13 + j * 5) % 63) + 1),
    chosenIds: Array.from({ length: 2 + (i % 5) }, (_, j) => ((i * 7 + j * 3) % 31) + 1),
    rejectedIds: Array.from({ length: 3 + (i % 3) }, (_, j) => ((i * 11 + j * 17) % 31) + 33),
  }));
}

const PROMPTS = [
  [5, 9, 13, 2],
  [7, 3, 11, 4],
  [21, 8, 30, 6],
  [17, 12, 25, 9],
];
const COMPLETIONS = [
  [40, 41, 7, 9, 3],
  [12, 50, 33, 1, 8],
  [22, 3, 61, 17, 5],
  [8, 8, 19, 44, 2],
];

/**
 * GRPO and PPO updates on fixed samples, `steps` times, saving the policy after each into out/checkpoint-<step>.
 * GRPO: two prompts with two completions each, one group per rank when distributed (loss type 'grpo': a mean over
 * sequences, so two ranks' means average to the batch's). PPO: the same four query-response pairs on every rank
 * (PPO whitens advantages per rank, as TRL's PPOv2), so that averaged gradients equal one process's on them.
 */
async function rlSteps(spec: WorkerSpec, distributed: boolean): Promise<void> {
  const policy = await Model.fromConfig(CONFIG, { task: 'causal-lm', seed: 7 });
  await new LoRA({ r: 4, alpha: 8, targetModules: ['c_attn'], seed: 3 }).apply(policy);
  const rank = distributed ? Number(process.env.RANK) : 0;
  const save = async (trainer: { save(dir: string): Promise<void> }, step: number) => {
    if (rank === 0) await trainer.save(path.join(spec.out, `checkpoint-${step}`));
  };
  if (spec.kind === 'grpo') {
    const grpo = await GRPO.create(policy, {
      rewardFn: () => [],
      numGenerations: 2,
      maxCompletionLength: 5,
      lossType: 'grpo',
      lr: 1e-2,
      seed: 5,
      distributed,
    });
    const groups = distributed ? [rank] : [0, 1];
    const gen = {
      prompts: groups.flatMap((g) => [PROMPTS[g], PROMPTS[g]]),
      completions: groups.flatMap((g) => [COMPLETIONS[2 * g], COMPLETIONS[2 * g + 1]]),
      advantages: groups.flatMap((g) => [g ? 0.7 : 1, g ? -0.7 : -1]),
      rewards: groups.flatMap(() => [1, 0]),
    };
    for (let step = 1; step <= spec.steps; step++) {
      await grpo.step(gen);
      await save(grpo, step);
    }
    grpo.dispose();
  } else {
    const ppo = await PPO.create(policy, { rewardFn: () => [], responseLength: 5, lr: 1e-2, ppoEpochs: 2, seed: 5, distributed });
    for (let step = 1; step <= spec.steps; step++) {
      await ppo.step({ queries: PROMPTS, responses: COMPLETIONS, scores: [1, -0.5, 0.25, 0.8] });
      await save(ppo, step);
    }
    ppo.dispose();
  }
  policy.dispose();
}

export async function train(spec: WorkerSpec, distributed: boolean): Promise<void> {
  if (spec.kind === 'grpo' || spec.kind === 'ppo') return rlSteps(spec, distributed);
  if (spec.kind === 'dpo') {
    const policy = await Model.fromConfig(CONFIG, { task: 'causal-lm', seed: 7 });
    await new LoRA({ r: 4, alpha: 8, targetModules: ['c_attn'], seed: 3 }).apply(policy);
    const dpo = new DPO(policy, {
      lr: 1e-2,
      batchSize: spec.batchSize,
      seed: 5,
      checkpointDir: spec.out,
      checkpointEvery: 1,
      keepCheckpoints: 100,
      distributed,
    });
    await dpo.train(pairs());
    dpo.dispose();
    policy.dispose();
    return;
  }
  const model = await Model.fromConfig(CONFIG, {
    task: spec.kind === 'lm' ? 'causal-lm' : 'sequence-classification',
    ...(spec.kind !== 'lm' ? { numLabels: 2 } : {}),
    seed: 7,
  });
  if (spec.kind === 'unused') await new LoRA({ r: 2, targetModules: ['c_attn'], seed: 4 }).apply(model, { adapterName: 'idle' });
  if (spec.kind !== 'lm') await new LoRA({ r: 4, alpha: 8, targetModules: ['c_attn'], seed: 3 }).apply(model);
  if (spec.kind === 'unused') await model.setTrainable([/\.idle\./], true);
  const rank = Number(process.env.RANK ?? 0);
  const firstAttempt = (process.env.TORCHELASTIC_RESTART_COUNT ?? '0') === '0';
  const trainer = new Trainer(model, {
    optimizer: new AdamW(model, { lr: 1e-2, weightDecay: 0.01 }),
    batchSize: spec.batchSize,
    gradAccumulation: spec.gradAccumulation,
    maxGradNorm: 1,
    epochs: 100,
    maxSteps: spec.steps,
    seed: 5,
    checkpointDir: spec.out,
    checkpointEvery: 1,
    keepCheckpoints: 100,
    distributed,
    onProgress: (p) => {
      if (spec.fault && firstAttempt && rank === spec.fault.rank && p.step === spec.fault.step)
        process.kill(process.pid, spec.fault.signal);
    },
  });
  await trainer.train(examples(spec.kind));
  model.dispose();
}

/** Collectives on small values: rank r contributes r + 1. */
export async function collectives(): Promise<object> {
  const group = await ProcessGroup.init();
  const sum = await group.allReduce([group.rank + 1, 0.5 * (group.rank + 1)]);
  const max = await group.allReduce([group.rank + 1], 'max');
  const min = await group.allReduce([group.rank + 1], 'min');
  const from0 = await group.broadcast(group.rank === 0 ? { text: 'from rank 0', n: [1, 2, 3] } : null);
  await group.barrier();
  group.destroy();
  return { rank: group.rank, worldSize: group.worldSize, sum, max, min, from0 };
}

if (require.main === module) {
  const [mode, arg] = process.argv.slice(2);
  const job =
    mode === 'collectives' ? collectives().then((r) => console.log(JSON.stringify(r))) : train(JSON.parse(arg) as WorkerSpec, true);
  job.catch((e) => {
    console.error(`worker failed: ${(e as Error).message}`);
    process.exitCode = 1;
  });
}
