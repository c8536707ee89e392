/**
 * One run of the classic-strategies experiment on the tunekit side, in its own process (so its peak memory is its
 * own). Also writes what the Python twin needs to run the same thing: the token ids, the batch order of every
 * epoch, and the initial weights (the same fresh head).
 *
 *   node --require tsx/cjs scripts/experiment/classic-run.ts --model DIR --data builtin:NAME --strategy S --seed N --work DIR
 *     [--lr X --epochs N | --C X]      (a grid point instead of the plan's setting)
 *
 * Prints one JSON line with the result.
 */
import fs from 'node:fs';
import path from 'node:path';
import { FeatureBased, FinetunePEFT, InContext, Model, Tokenizer, builtinSplits } from '../../lib';
import type { Selection } from '../../lib/strategies';
import { STRATEGIES, StrategyOptions } from '../../lib/strategies';
import { shuffled } from '../../lib/random';
import type { StrategyResult } from '../../lib';

/** `base`: the registered strategy a plan runs (default: the plan's own name); `C`: the feature-based inverse
 * regularisation strength; `icl`: in-context learning's settings (causal LMs only; nothing trains). */
export interface StrategyPlan {
  base?: string;
  lr?: number;
  epochs?: number;
  C?: number;
  unfreezeLastBlocks?: number;
  icl?: { shots: number; selection?: Selection; calibrate?: boolean };
}

/** What each strategy is, shared by both sides; its hyperparameters come from GRIDS. */
export const PLANS: Record<string, StrategyPlan> = {
  features: {},
  head: {},
  'head+last1': { base: 'head', unfreezeLastBlocks: 1 },
  full: {},
  lora: {},
  adapter: {},
  prefix: {},
  prompt: {},
  'icl-0': { icl: { shots: 0 } },
  'icl-0+cal': { icl: { shots: 0, calibrate: true } },
  'icl-4-random': { icl: { shots: 4, selection: 'random' } },
  'icl-4-random+cal': { icl: { shots: 4, selection: 'random', calibrate: true } },
  'icl-4-similar': { icl: { shots: 4, selection: 'similar' } },
  'icl-4-similar+cal': { icl: { shots: 4, selection: 'similar', calibrate: true } },
};
/** In-context rows: causal LMs only, and nothing to tune (each is its own row, as the article reports them). */
export const ICL_STRATEGIES = Object.keys(PLANS).filter((k) => PLANS[k].icl);
/** In-context queries and demonstrations are cut to this many tokens, so that 4 demonstrations and the query fit
 * tiny-gpt2's 128 positions. */
export const ICL_MAX_LENGTH = 16;

/** The settings tried per strategy (seed 1, validation accuracy), as the article tuned each approach: learning
 * rates around each method's usual one, and for the classic strategies 3 or 6 epochs on the IMDB set (epochsFor
 * scales them to the larger set); the parameter-efficient ones keep 3 epochs (the run's time budget); the
 * feature-based logistic regression's C instead. */
export const GRIDS: Record<string, StrategyPlan[]> = {
  features: [0.1, 1, 10].map((C) => ({ C })),
  head: grid([1e-3, 3e-3, 1e-2], [3, 6]),
  'head+last1': grid([3e-4, 1e-3, 3e-3], [3, 6]),
  full: grid([1e-4, 3e-4, 1e-3], [3, 6]),
  lora: grid([1e-3, 3e-3, 1e-2], [3]),
  adapter: grid([1e-3, 3e-3, 1e-2], [3]),
  prefix: grid([3e-3, 1e-2, 3e-2], [3]),
  prompt: grid([3e-3, 1e-2, 3e-2], [3]),
  ...Object.fromEntries(ICL_STRATEGIES.map((k) => [k, [{}]])),
};
function grid(lrs: number[], epochs: number[]): StrategyPlan[] {
  return epochs.flatMap((e) => lrs.map((lr) => ({ lr, epochs: e })));
}
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

const arg = (name: string): string => {
  const v = optionalArg(name);
  if (v === undefined) throw new Error(`--${name} is required`);
  return v;
};
function optionalArg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : undefined;
}
const numberArg = (name: string) => (optionalArg(name) === undefined ? undefined : Number(optionalArg(name)));

async function main() {
  const modelDir = path.resolve(arg('model'));
  const data = arg('data');
  const strategy = arg('strategy');
  const seed = Number(arg('seed'));
  const work = path.resolve(arg('work'));
  if (!PLANS[strategy]) throw new Error(`unknown strategy ${strategy}`);
  const plan: StrategyPlan = { ...PLANS[strategy], lr: numberArg('lr'), epochs: numberArg('epochs'), C: numberArg('C') };
  fs.mkdirSync(work, { recursive: true });
  const splits = builtinSplits(data.replace(/^builtin:/, ''));
  const tok = await Tokenizer.fromPretrained(modelDir);
  // Virtual tokens and prefixes take positions too.
  const registered = STRATEGIES[plan.base ?? strategy];
  const maxLength = plan.icl ? ICL_MAX_LENGTH : MAX_LENGTH - (registered?.virtualTokens(methodOptions(seed)) ?? 0);
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
  if (plan.icl) {
    const model = await Model.fromPretrained(modelDir, { task: 'causal-lm' });
    result = await new InContext({ tokenizer: tok, labelWords: splits.train.labelNames!, seed, ...plan.icl }).run(model, {
      train,
      validation,
      test,
    });
  } else if (strategy === 'features') {
    const model = await Model.fromPretrained(modelDir, { task: 'feature-extraction', config: NO_DROPOUT });
    result = await new FeatureBased({ C: plan.C ?? 1 }).run(model, { train, validation, test });
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
