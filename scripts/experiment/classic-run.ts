/**
 * One run of the classic-strategies experiment on the tunekit side, in its own process (so its peak memory is its
 * own). Also writes what the Python twin needs to run the same thing: the token ids, the batch order of every
 * epoch, and the initial weights (the same fresh head).
 *
 *   node --require tsx/cjs scripts/experiment/classic-run.ts --model DIR --data builtin:NAME --strategy S --seed N --work DIR
 *
 * Prints one JSON line with the result.
 */
import fs from 'node:fs';
import path from 'node:path';
import { FeatureBased, FinetunePEFT, Model, Tokenizer, builtinSplits } from '../../lib';
import { STRATEGIES, StrategyOptions } from '../../lib/strategies';
import { shuffled } from '../../lib/random';
import type { StrategyResult } from '../../lib';

/** `base`: the registered strategy a plan runs (default: the plan's own name). */
export interface StrategyPlan {
  base?: string;
  lr?: number;
  epochs?: number;
  unfreezeLastBlocks?: number;
}

/** The hyperparameters of each strategy, shared by both sides. */
export const PLANS: Record<string, StrategyPlan> = {
  features: {},
  head: { lr: 2e-3, epochs: 3 },
  'head+last1': { base: 'head', lr: 1e-3, epochs: 3, unfreezeLastBlocks: 1 },
  full: { lr: 3e-4, epochs: 3 },
  lora: { lr: 2e-3, epochs: 3 },
  adapter: { lr: 2e-3, epochs: 3 },
  prefix: { lr: 1e-2, epochs: 3 },
  prompt: { lr: 1e-2, epochs: 3 },
};
/** The PEFT methods' settings in the experiment (the registry's defaults otherwise). */
const methodOptions = (seed: number): StrategyOptions => ({
  lora: { ...LORA, seed },
  adapter: { reductionFactor: 16, seed },
  prefix: { numVirtualTokens: 8, seed },
  prompt: { numVirtualTokens: 8, seed },
});
/** LoRA's shape in the experiment: PEFT's default target modules, r 8, alpha 16, no dropout (deterministic runs). */
export const LORA = { r: 8, alpha: 16, dropout: 0 };
export const BATCH_SIZE = 16;
/** The 3,000-sentence set has three times the examples: a third of the epochs keeps the step count (and time) alike. */
export function epochsFor(plan: StrategyPlan, data: string): number {
  const e = plan.epochs ?? 1;
  return data.endsWith('sentiment-sentences') ? Math.max(1, Math.round(e / 3)) : e;
}
export const PEFT_STRATEGIES = ['lora', 'adapter', 'prefix', 'prompt'];
export const MAX_LENGTH = 128;

/** No dropout on either side, so that a run is deterministic and the two implementations compare run by run. */
export const NO_DROPOUT = {
  dropout: 0,
  attention_dropout: 0,
  seq_classif_dropout: 0,
  resid_pdrop: 0,
  embd_pdrop: 0,
  attn_pdrop: 0,
  summary_first_dropout: 0,
};

const arg = (name: string) => {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0 || i + 1 >= process.argv.length) throw new Error(`--${name} is required`);
  return process.argv[i + 1];
};

async function main() {
  const modelDir = path.resolve(arg('model'));
  const data = arg('data');
  const strategy = arg('strategy');
  const seed = Number(arg('seed'));
  const work = path.resolve(arg('work'));
  const plan = PLANS[strategy];
  if (!plan) throw new Error(`unknown strategy ${strategy}`);
  fs.mkdirSync(work, { recursive: true });
  const splits = builtinSplits(data.replace(/^builtin:/, ''));
  const tok = await Tokenizer.fromPretrained(modelDir);
  // Virtual tokens and prefixes take positions too.
  const registered = STRATEGIES[plan.base ?? strategy];
  const maxLength = MAX_LENGTH - (registered?.virtualTokens(methodOptions(seed)) ?? 0);
  const [train, validation, test] = [splits.train, splits.validation, splits.test].map((d) => d.toExamples(tok, { maxLength }));
  const epochs = epochsFor(plan, data);
  const orders = Array.from({ length: epochs }, (_, e) => shuffled(train.length, seed + e));
  fs.writeFileSync(
    path.join(work, 'data.json'),
    JSON.stringify({
      strategy,
      seed,
      batchSize: BATCH_SIZE,
      ...plan,
      epochs,
      padTokenId: null,
      train: train.map((e) => [e.inputIds, e.label]),
      validation: validation.map((e) => [e.inputIds, e.label]),
      test: test.map((e) => [e.inputIds, e.label]),
      orders,
    }),
  );
  let result: StrategyResult;
  if (strategy === 'features') {
    const model = await Model.fromPretrained(modelDir, { task: 'feature-extraction', config: NO_DROPOUT });
    result = await new FeatureBased({ C: 1 }).run(model, { train, validation, test });
  } else {
    const model = await Model.fromPretrained(modelDir, {
      task: 'sequence-classification',
      numLabels: 2,
      seed,
      config: NO_DROPOUT,
      labelNames: ['negative', 'positive'],
    });
    await model.savePretrained(path.join(work, 'init'));
    const opts = { lr: plan.lr, epochs, batchSize: BATCH_SIZE, seed, weightDecay: 0.01, warmupRatio: 0.1, maxGradNorm: 1.0 };
    if (registered.peft) {
      const peft = registered.create(opts, methodOptions(seed)) as FinetunePEFT;
      // The adapter is created here so its initial weights can be handed to PEFT too.
      await peft.apply(model);
      await model.saveAdapter(path.join(work, 'init-adapter'));
      result = await peft.run(model, { train, validation, test });
      const file = path.join(work, 'adapter');
      await model.saveAdapter(file);
      (result as StrategyResult & { adapterBytes?: number; checkpointBytes?: number }).adapterBytes = fs.statSync(
        path.join(file, 'adapter_model.safetensors'),
      ).size;
    } else {
      result = await registered
        .create(opts, { head: { unfreezeLastBlocks: plan.unfreezeLastBlocks ?? 0 } })
        .run(model, { train, validation, test });
    }
    (result as StrategyResult & { checkpointBytes?: number }).checkpointBytes = fs.statSync(
      path.join(work, 'init', 'model.safetensors'),
    ).size;
  }
  const { train: tr, ...rest } = result;
  console.log(JSON.stringify({ side: 'tunekit', model: path.basename(modelDir), data, seed, ...rest, steps: tr?.steps }));
}

if (require.main === module) {
  main().catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}
