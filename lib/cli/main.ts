#!/usr/bin/env node
/** The tunekit command line: finetune, evaluate, generate, and the preference and RLHF commands (./rl.ts). */
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import {
  CHECKPOINT_FLAGS,
  checkpointing,
  Command,
  computeOptions,
  PRECISION_HELP,
  modelDir,
  num,
  Opts,
  prepareOut,
  saveTrained,
  UsageError,
} from './args';
import { INDEX_COMMANDS } from './index-commands';
import { LAUNCH_COMMANDS, NPROC_FLAG, relaunch, workerRole } from './launch';
import { RL_COMMANDS } from './rl';
import { SERVE_COMMANDS } from './serve';
import { Dataset, loadSplits, Splits } from '../data';
import { TunekitError } from '../errors';
import { Model, Pooling } from '../model';
import { lineChartSvg, lossSeries, writeSvg } from '../plot';
import { MetricsWriter, progressBar, ProgressBar, trainingFields } from '../progress';
import {
  FEATURES_SUMMARY,
  FeatureBased,
  ICL_SUMMARY,
  InContext,
  InContextOptions,
  PromptSearch,
  Selection,
  STRATEGIES,
  StrategyOptions,
  StrategyResult,
  TrainOptions,
} from '../strategies';
import { readJsonFile, writeJsonAtomic } from '../safetensors';
import { Tokenizer } from '../tokenizer';
import { evaluateModel } from '../trainer';

const DEFAULT_DATA = 'builtin:imdb-sentences';

async function splitsOf(o: Opts): Promise<Splits> {
  const spec = String(o.data ?? DEFAULT_DATA);
  const fields = Object.fromEntries(
    (['text', 'label', 'prompt', 'response'] as const).filter((f) => o[`${f}-field`]).map((f) => [f, String(o[`${f}-field`])]),
  );
  if (!spec.startsWith('builtin:') && !fs.existsSync(spec))
    throw new UsageError(`--data ${spec}: no such file (or use builtin:imdb-sentences, builtin:sentiment-sentences)`);
  const validationSpec = o['validation-data'];
  if (validationSpec === undefined) return loadSplits(spec, { fields, seed: num(o, 'seed', 42, 'int') });
  // All of --data trains; validation comes from its own file (or there is none), and there is no test split.
  if (spec.startsWith('builtin:')) throw new UsageError('--validation-data goes with a --data file, not a built-in set');
  const train = await Dataset.fromFile(spec, { fields });
  const labelNames = train.labelNames;
  const none = new Dataset([], { labelNames, source: spec });
  if (validationSpec === 'none') return { train, validation: none, test: none };
  if (!fs.existsSync(String(validationSpec))) throw new UsageError(`--validation-data ${validationSpec}: no such file`);
  return { train, validation: await Dataset.fromFile(String(validationSpec), { fields, labelNames }), test: none };
}

/** Labelled data must name at least two classes: one class would make a regression head that scores 100%. */
function checkClasses(splits: Splits): void {
  if (splits.train.kind !== 'classification') return;
  const seen = new Set(splits.train.rows.map((r) => r.label));
  if (seen.size < 2) {
    const name = splits.train.labelNames![[...seen][0]!];
    throw new UsageError(
      `every training label is ${JSON.stringify(name)}: a classifier needs at least two classes (is --label-field the class field?)`,
    );
  }
}

/** Loads the model for the data: a classification head sized to the labels, or the model's own language-model task. */
async function modelFor(dir: string, splits: Splits, o: Opts): Promise<Model> {
  const seed = num(o, 'seed', 42, 'int');
  checkClasses(splits);
  if (splits.train.kind === 'classification') {
    const labelNames = splits.train.labelNames!;
    return Model.fromPretrained(dir, {
      task: 'sequence-classification',
      numLabels: labelNames.length,
      labelNames,
      seed,
      ...computeOptions(o),
    });
  }
  return Model.fromPretrained(dir, { task: 'causal-lm', seed, ...computeOptions(o) });
}

function describe(r: { accuracy?: number; perplexity?: number; loss: number; examples: number }): string {
  if (r.accuracy !== undefined) return `accuracy ${(100 * r.accuracy).toFixed(1)}% (loss ${r.loss.toFixed(4)}, ${r.examples} examples)`;
  return `perplexity ${r.perplexity!.toFixed(2)} (loss ${r.loss.toFixed(4)}, ${r.examples} examples)`;
}

const common = {
  model: { type: 'string' },
  data: { type: 'string' },
  'batch-size': { type: 'string' },
  'max-length': { type: 'string' },
  'text-field': { type: 'string' },
  'label-field': { type: 'string' },
  'prompt-field': { type: 'string' },
  'response-field': { type: 'string' },
  seed: { type: 'string' },
  device: { type: 'string' },
  precision: { type: 'string' },
  quiet: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;
const commonHelp = {
  model: `model folder in Hugging Face format (default: models/tiny-distilbert)`,
  data: `builtin:imdb-sentences | builtin:sentiment-sentences | a .jsonl, .csv, .tsv or .json file (default: ${DEFAULT_DATA}); files are split 70/10/20 by --seed`,
  'batch-size': 'examples per batch (default 16)',
  'max-length': 'truncate texts to this many tokens (default 128)',
  'text-field': 'the field holding the text (default: text)',
  'label-field': 'the field holding the class label (default: label)',
  'prompt-field': 'the field holding the prompt of prompt/response rows (default: prompt)',
  'response-field': 'the field holding the response of prompt/response rows (default: response; OpenAI files call it completion)',
  seed: 'seed for the head initialisation, shuffling and file splits (default 42)',
  device: 'cpu or cuda (default cpu)',
  precision: PRECISION_HELP,
  quiet: 'no progress bar',
};

/** The default cut of texts for in-context learning, where demonstrations and the query share the context. */
const ICL_MAX_LENGTH = 64;

/** In-context learning's flags, shared by `finetune --strategy icl` and `prompt-search`. */
const ICL_FLAGS = {
  options: {
    template: { type: 'string' },
    'label-words': { type: 'string' },
    shots: { type: 'string' },
    selection: { type: 'string' },
    calibrate: { type: 'boolean' },
  },
  help: {
    template: 'in-context: one labelled example with {text} then {label} (default "Review: {text}\\nSentiment: {label}"; \\n is a newline)',
    'label-words': "in-context: comma-separated word per class, in label order (default: the data's label names)",
    shots: `in-context: demonstrations before each query (default 0; texts are cut to --max-length, default ${ICL_MAX_LENGTH} here, and demonstrations that would not fit the context are dropped, the farthest first)`,
    selection: 'in-context: random, balanced or similar (default random)',
    calibrate: 'in-context: contextual calibration against the content-free input "N/A"',
  },
} as const;

/** InContext's options from the ICL flags. */
function inContextOptions(o: Opts, splits: Splits, tok: Tokenizer): InContextOptions {
  if (splits.train.kind !== 'classification') throw new UsageError('in-context learning needs labelled data (a label field)');
  checkClasses(splits);
  return {
    tokenizer: tok,
    labelWords:
      o['label-words'] !== undefined
        ? String(o['label-words'])
            .split(',')
            .map((w) => w.trim())
        : splits.train.labelNames!,
    ...(o.template !== undefined ? { template: String(o.template).replace(/\\n/g, '\n') } : {}),
    shots: num(o, 'shots', 0, 'int'),
    selection: o.selection as Selection | undefined,
    calibrate: Boolean(o.calibrate),
    seed: num(o, 'seed', 42, 'int'),
  };
}

export const COMMANDS: Record<string, Command> = {
  finetune: {
    summary: 'train a model on a dataset and report test metrics',
    usage: 'tunekit finetune [--model DIR] [--data SPEC] [--strategy NAME] [--out DIR] [options]',
    options: {
      ...common,
      strategy: { type: 'string' },
      'validation-data': { type: 'string' },
      out: { type: 'string' },
      epochs: { type: 'string' },
      lr: { type: 'string' },
      'max-steps': { type: 'string' },
      'weight-decay': { type: 'string' },
      'warmup-ratio': { type: 'string' },
      'grad-accumulation': { type: 'string' },
      'unfreeze-last-blocks': { type: 'string' },
      pooling: { type: 'string' },
      C: { type: 'string' },
      'lora-r': { type: 'string' },
      'lora-alpha': { type: 'string' },
      'lora-dropout': { type: 'string' },
      'lora-targets': { type: 'string' },
      'reduction-factor': { type: 'string' },
      'bottleneck-size': { type: 'string' },
      nonlinearity: { type: 'string' },
      'num-virtual-tokens': { type: 'string' },
      'prefix-projection': { type: 'boolean' },
      'prompt-init-text': { type: 'string' },
      ...ICL_FLAGS.options,
      ...CHECKPOINT_FLAGS.options,
      overwrite: { type: 'boolean' },
      ...NPROC_FLAG.options,
    },
    help: {
      ...commonHelp,
      strategy: `how to adapt the model (default full): features = ${FEATURES_SUMMARY}; ${ICL_SUMMARY}; ${Object.entries(STRATEGIES)
        .map(([k, v]) => `${k} = ${v.summary}`)
        .join('; ')}`,
      'validation-data': 'a file of validation rows: then all of --data trains and there is no test split (none: no validation either)',
      out: 'folder for the finetuned model, metrics.jsonl, loss.svg and results.json (default: runs/MODEL-STRATEGY)',
      epochs: 'passes over the training split (default 3)',
      lr: `peak learning rate (default ${Object.entries(STRATEGIES)
        .map(([k, v]) => `${k} ${v.lr}`)
        .join(', ')})`,
      'max-steps': 'stop after this many optimizer steps',
      'weight-decay': 'AdamW weight decay (default 0.01)',
      'warmup-ratio': 'fraction of steps of linear warm-up (default 0.1)',
      'grad-accumulation': 'batches per optimizer step (default 1)',
      'unfreeze-last-blocks': 'with --strategy head: also train the last N transformer blocks',
      pooling: 'with --strategy features: cls, mean or last (default: cls for encoders, last for decoders)',
      C: 'with --strategy features: inverse L2 strength of the logistic regression (default 1)',
      'lora-r': 'with --strategy lora: rank (default 8)',
      'lora-alpha': 'with --strategy lora: alpha (default 16)',
      'lora-dropout': 'with --strategy lora: dropout on the adapter input (default 0.1)',
      'lora-targets': "with --strategy lora: comma-separated module names (default: PEFT's for the family)",
      'reduction-factor': 'with --strategy adapter: bottleneck = hidden / this (default 16)',
      'bottleneck-size': 'with --strategy adapter: bottleneck width',
      nonlinearity: 'with --strategy adapter: relu (default), gelu, silu',
      'num-virtual-tokens': 'with --strategy prefix|prompt: how many (default 8)',
      'prefix-projection': 'with --strategy prefix: reparameterise through an MLP',
      'prompt-init-text': "with --strategy prompt: initialise the virtual tokens from this text's embeddings",
      ...ICL_FLAGS.help,
      ...CHECKPOINT_FLAGS.help,
      overwrite: 'replace what --out holds instead of refusing a non-empty folder',
      ...NPROC_FLAG.help,
    },
    async run(o) {
      const { relaunch: nproc, distributed, lead } = workerRole(o);
      if (nproc) return relaunch(nproc);
      const strategyName = String(o.strategy ?? 'full');
      const spec = STRATEGIES[strategyName];
      if (strategyName !== 'features' && strategyName !== 'icl' && !spec)
        throw new UsageError(
          `--strategy ${strategyName}: unknown strategy (expected one of features, icl, ${Object.keys(STRATEGIES).join(', ')})`,
        );
      const dir = modelDir(o);
      const out = path.resolve(String(o.out ?? path.join('runs', `${path.basename(dir)}-${strategyName}`)));
      if (distributed && (strategyName === 'features' || strategyName === 'icl'))
        throw new UsageError(`--strategy ${strategyName} trains no network: run it in one process`);
      if (lead) prepareOut(out, o, strategyName !== 'features' && strategyName !== 'icl');
      const splits = await splitsOf(o);
      const tok = await Tokenizer.fromPretrained(dir);
      // In context, demonstrations and the query share the model's context: texts default to a shorter cut.
      const maxLength = num(o, 'max-length', strategyName === 'icl' ? ICL_MAX_LENGTH : 128, 'int')!;
      if (strategyName === 'features') return runFeatures(dir, splits, tok, maxLength, out, o);
      if (strategyName === 'icl') return runInContext(dir, splits, tok, maxLength, out, o);
      const model = await modelFor(dir, splits, o);
      const seed = num(o, 'seed', 42, 'int');
      const virtualTokens = num(o, 'num-virtual-tokens', undefined, 'int');
      // Each method's options from its flags (the strategy uses its own; every other's are unused).
      const methodOptions: StrategyOptions = {
        head: { unfreezeLastBlocks: num(o, 'unfreeze-last-blocks', 0, 'int') },
        lora: {
          r: num(o, 'lora-r', 8, 'int'),
          alpha: num(o, 'lora-alpha', 16),
          dropout: num(o, 'lora-dropout', 0.1),
          seed,
          ...(o['lora-targets']
            ? {
                targetModules: String(o['lora-targets'])
                  .split(',')
                  .map((x) => x.trim())
                  .filter(Boolean),
              }
            : {}),
        },
        adapter: {
          reductionFactor: num(o, 'reduction-factor', 16),
          bottleneckSize: num(o, 'bottleneck-size', undefined, 'int'),
          nonlinearity: o.nonlinearity as string | undefined,
          seed,
        },
        prefix: { numVirtualTokens: virtualTokens, prefixProjection: Boolean(o['prefix-projection']), seed },
        prompt: {
          numVirtualTokens: virtualTokens,
          seed,
          ...(o['prompt-init-text']
            ? { promptTuningInitText: String(o['prompt-init-text']), tokenizer: tok, tokenizerNameOrPath: dir }
            : {}),
        },
        ia3: {},
      };
      // Virtual tokens (and a prefix where positions continue after it) take positions: leave them room.
      const fit = Math.min(maxLength, model.dims.maxPositions - spec.virtualTokens(methodOptions));
      if (fit < 1)
        throw new UsageError(
          `--num-virtual-tokens ${spec.virtualTokens(methodOptions)} leaves no room for the text: the model has ${model.dims.maxPositions} positions`,
        );
      const [train, validation, test] = [splits.train, splits.validation, splits.test].map((d) => d.toExamples(tok, { maxLength: fit }));
      const resume = Boolean(o.resume);
      if (lead) fs.mkdirSync(out, { recursive: true });
      const metrics = lead ? new MetricsWriter(path.join(out, 'metrics.jsonl'), { resume }) : undefined;
      let bar: ProgressBar | undefined;
      const opts: TrainOptions = {
        lr: num(o, 'lr', spec.lr),
        epochs: num(o, 'epochs', 3, 'int'),
        batchSize: num(o, 'batch-size', 16, 'int'),
        maxSteps: num(o, 'max-steps', undefined, 'int'),
        weightDecay: num(o, 'weight-decay', 0.01),
        warmupRatio: num(o, 'warmup-ratio', 0.1),
        gradAccumulation: num(o, 'grad-accumulation', 1, 'int'),
        seed,
        ...checkpointing(o, out),
        // The model is saved as soon as training ends: the evaluations that follow cannot lose it.
        onTrained: () => saveTrained(model, dir, out, Boolean(spec.peft)),
        ...(distributed ? { distributed: true } : {}),
        onProgress: (p) => {
          if (!metrics) return;
          bar ??= progressBar(p.totalSteps, strategyName, { silent: Boolean(o.quiet) });
          bar.update(p.step, trainingFields(p));
          metrics.write({
            step: p.step,
            epoch: p.epoch,
            loss: p.loss,
            totalSteps: p.totalSteps,
            lr: p.lr,
            gradNorm: p.gradNorm,
            tokensPerSecond: p.tokensPerSecond,
            elapsedMs: p.elapsedMs,
            ...(p.evalLoss !== undefined ? { evalLoss: p.evalLoss } : {}),
            ...(p.evalAccuracy !== undefined ? { evalAccuracy: p.evalAccuracy } : {}),
          });
        },
      };
      const strategy = spec.create(opts, methodOptions);
      if (lead)
        console.log(
          `${strategyName} finetuning of ${dir} on ${splits.train.source}: ${train.length} train / ${validation.length} validation / ${test.length} test examples`,
        );
      let result: StrategyResult;
      try {
        result = await strategy.run(model, { train, validation, test });
      } finally {
        bar?.stop();
      }
      if (!metrics) return model.dispose();
      await writeSvg(
        path.join(out, 'loss.svg'),
        await lineChartSvg(lossSeries(metrics.file), { title: `${path.basename(dir)}, ${strategyName}: loss` }),
      );
      const { train: tr, ...rest } = result;
      await writeJsonAtomic(path.join(out, 'results.json'), {
        model: dir,
        data: splits.train.source,
        ...rest,
        steps: tr?.steps,
        trainLoss: tr?.trainLoss,
        ...(tr?.resumedFrom !== undefined ? { resumedFrom: tr.resumedFrom } : {}),
      });
      console.log(
        `trainable parameters: ${result.trainableParameters.toLocaleString('en-US')} of ${result.totalParameters.toLocaleString('en-US')}; ${tr?.steps} steps in ${(result.wallTimeMs / 1000).toFixed(1)} s (${Math.round(result.tokensPerSecond ?? 0)} tok/s), peak RSS ${result.peakRssMiB.toFixed(0)} MiB`,
      );
      if (result.validation) console.log(`validation ${describe(result.validation)}`);
      if (result.test) console.log(`test ${describe(result.test)}`);
      console.log(
        `saved to ${out} (${spec.peft ? `${strategyName} adapter (use evaluate --adapter ${out} --model ${dir})` : 'model'}, metrics.jsonl, loss.svg, results.json)`,
      );
      model.dispose();
    },
  },

  evaluate: {
    summary: 'score a model on a dataset split (accuracy for labelled data, perplexity for text)',
    usage: 'tunekit evaluate --model DIR [--data SPEC] [--split test|validation|train] [options]',
    options: { ...common, split: { type: 'string' }, adapter: { type: 'string' } },
    help: {
      ...commonHelp,
      split: 'which split to score (default test)',
      adapter: 'a PEFT adapter folder (e.g. from --strategy lora) to apply to --model',
    },
    async run(o) {
      if (o.model === undefined) throw new UsageError('--model is required (a model folder, e.g. one written by tunekit finetune)');
      const dir = modelDir(o);
      const split = String(o.split ?? 'test');
      if (!['train', 'validation', 'test'].includes(split)) throw new UsageError(`--split ${split}: expected train, validation or test`);
      const splits = await splitsOf(o);
      const data = splits[split as keyof Splits];
      const config = readJsonFile(path.join(dir, 'config.json'));
      const isClassifier =
        Array.isArray(config.architectures) && config.architectures.some((a: string) => a.endsWith('ForSequenceClassification'));
      if (data.kind === 'classification' && !isClassifier && !o.adapter)
        throw new UsageError(
          `${dir} is not a classifier (architectures ${JSON.stringify(config.architectures)}); finetune it on labelled data first`,
        );
      const model = await Model.fromPretrained(dir, {
        task: data.kind === 'classification' ? 'sequence-classification' : 'causal-lm',
        ...computeOptions(o),
        ...(o.adapter && data.kind === 'classification' && !isClassifier ? { numLabels: data.labelNames!.length } : {}),
      });
      if (o.adapter) await model.loadAdapter(path.resolve(String(o.adapter)));
      if (data.kind === 'classification' && model.numLabels < (data.labelNames?.length ?? 0))
        throw new UsageError(`${dir} has ${model.numLabels} classes but the data has ${data.labelNames!.length}`);
      const tok = await Tokenizer.fromPretrained(dir);
      const examples = data.toExamples(tok, { maxLength: num(o, 'max-length', 128, 'int') });
      const r = await evaluateModel(model, examples, { batchSize: num(o, 'batch-size', 32, 'int') });
      console.log(`${split} ${describe(r)}`);
      model.dispose();
    },
  },

  generate: {
    summary: 'continue a prompt with a causal language model',
    usage: 'tunekit generate --model DIR --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S]',
    options: {
      model: { type: 'string' },
      prompt: { type: 'string' },
      'max-new-tokens': { type: 'string' },
      temperature: { type: 'string' },
      'top-k': { type: 'string' },
      'top-p': { type: 'string' },
      seed: { type: 'string' },
      device: { type: 'string' },
      precision: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    help: {
      model: 'a causal language model folder (e.g. models/tiny-gpt2)',
      prompt: 'the text to continue',
      'max-new-tokens': 'tokens to add (default 40)',
      temperature: '0 = greedy (default); above 0 samples',
      'top-k': 'sample from the k most likely tokens',
      'top-p': 'sample from the smallest set with this much probability',
      seed: 'seed for sampling (default 0)',
      device: 'cpu or cuda (default cpu)',
      precision: PRECISION_HELP,
    },
    async run(o) {
      if (o.model === undefined) throw new UsageError('--model is required (e.g. models/tiny-gpt2)');
      if (typeof o.prompt !== 'string' || o.prompt.length === 0) throw new UsageError('--prompt TEXT is required');
      const dir = modelDir(o);
      const model = await Model.fromPretrained(dir, { task: 'causal-lm', ...computeOptions(o) });
      const tok = await Tokenizer.fromPretrained(dir);
      const ids = tok.encode(o.prompt);
      const [outIds] = await model.generate(
        { inputIds: [ids] },
        {
          maxNewTokens: num(o, 'max-new-tokens', 40, 'int'),
          temperature: num(o, 'temperature', 0),
          topK: num(o, 'top-k', undefined, 'int'),
          topP: num(o, 'top-p', undefined),
          seed: num(o, 'seed', 0, 'int'),
          eosTokenId: tok.eosTokenId,
        },
      );
      console.log(o.prompt + tok.decode(outIds.slice(ids.length), { skipSpecialTokens: true }));
      model.dispose();
    },
  },
  'prompt-search': {
    summary: 'hard prompt tuning: search template wordings (GrIPS edits) and label words for in-context classification',
    usage: 'tunekit prompt-search [--model DIR] [--data SPEC] [--template T] [--label-words a,b] [--shots N] [--out DIR] [options]',
    options: {
      ...common,
      ...ICL_FLAGS.options,
      pool: { type: 'string' },
      beam: { type: 'string' },
      candidates: { type: 'string' },
      iterations: { type: 'string' },
      'dev-size': { type: 'string' },
      'label-candidates': { type: 'string' },
      out: { type: 'string' },
      overwrite: { type: 'boolean' },
    },
    help: {
      ...commonHelp,
      model: 'a causal language model folder (default: models/tiny-gpt2)',
      ...ICL_FLAGS.help,
      template: 'the template the search starts from (default "Review: {text}\\nSentiment: {label}"; \\n is a newline)',
      pool: "phrases the 'add' edit may insert, separated by | (besides the phrases deleted during the search)",
      beam: 'templates kept between rounds (default 4)',
      candidates: 'edited candidates per beam member and round (default 6)',
      iterations: 'rounds of template edits (default 5)',
      'dev-size': 'validation examples each candidate is scored on (default 64)',
      'label-candidates': 'whole words tried per class in the label-word search (default 8; 0 skips it)',
      out: 'folder for results.json (default: runs/MODEL-prompt-search)',
      overwrite: 'replace what --out holds instead of refusing a non-empty folder',
    },
    async run(o) {
      const dir = o.model === undefined ? path.resolve('models', 'tiny-gpt2') : modelDir(o);
      const out = path.resolve(String(o.out ?? path.join('runs', `${path.basename(dir)}-prompt-search`)));
      prepareOut(out, o, false);
      const splits = await splitsOf(o);
      const tok = await Tokenizer.fromPretrained(dir);
      const options = inContextOptions(o, splits, tok);
      const model = await Model.fromPretrained(dir, { task: 'causal-lm', ...computeOptions(o) });
      const maxLength = num(o, 'max-length', ICL_MAX_LENGTH, 'int');
      const [train, validation, test] = [splits.train, splits.validation, splits.test].map((d) => d.toExamples(tok, { maxLength }));
      const search = new PromptSearch({
        ...options,
        ...(o.pool !== undefined ? { pool: String(o.pool).split('|') } : {}),
        beam: num(o, 'beam', undefined, 'int'),
        candidates: num(o, 'candidates', undefined, 'int'),
        iterations: num(o, 'iterations', undefined, 'int'),
        devSize: num(o, 'dev-size', undefined, 'int'),
        labelCandidates: num(o, 'label-candidates', undefined, 'int'),
        onProgress: (n, best) => {
          if (!o.quiet)
            process.stderr.write(`\rprompt-search: ${n} candidates scored, best ${(100 * best.accuracy).toFixed(1)}% on the sample   `);
        },
      });
      const result = await search.run(model, { train, validation, test });
      if (!o.quiet) process.stderr.write('\n');
      fs.mkdirSync(out, { recursive: true });
      await writeJsonAtomic(path.join(out, 'results.json'), { model: dir, data: splits.train.source, ...result });
      for (const [name, r] of [
        ['initial', result.initial],
        ['best', result.best],
      ] as const)
        console.log(
          `${name}: ${JSON.stringify(r.template)} with ${r.labelWords.join(', ')}: validation ${r.validation ? describe(r.validation) : 'n/a'}, test ${r.test ? describe(r.test) : 'n/a'}`,
        );
      console.log(
        `${result.candidates.length} candidates scored in ${(result.wallTimeMs / 1000).toFixed(1)} s; every one is in ${path.join(out, 'results.json')}`,
      );
      model.dispose();
    },
  },
  ...RL_COMMANDS,
  ...INDEX_COMMANDS,
  ...SERVE_COMMANDS,
  ...LAUNCH_COMMANDS,
};

async function runInContext(dir: string, splits: Splits, tok: Tokenizer, maxLength: number, out: string, o: Opts): Promise<void> {
  const options = inContextOptions(o, splits, tok);
  const model = await Model.fromPretrained(dir, { task: 'causal-lm', ...computeOptions(o) });
  const [train, validation, test] = [splits.train, splits.validation, splits.test].map((d) => d.toExamples(tok, { maxLength }));
  const bar = progressBar(validation.length + test.length, 'icl', { silent: Boolean(o.quiet) });
  const icl = new InContext({ ...options, onProgress: (done) => bar.update(done) });
  console.log(
    `in-context classification with ${dir} on ${splits.train.source}: ${icl.options.shots} ${icl.options.selection} shots, label words ${options.labelWords.join(', ')}${icl.options.calibrate ? ', calibrated' : ''}`,
  );
  let result: StrategyResult;
  try {
    result = await icl.run(model, { train, validation, test });
  } finally {
    bar.stop();
  }
  fs.mkdirSync(out, { recursive: true });
  const { tokenizer: _tokenizer, onProgress: _onProgress, ...settings } = icl.options;
  await writeJsonAtomic(path.join(out, 'results.json'), { model: dir, data: splits.train.source, ...settings, ...result });
  console.log(
    `${result.shotsUsed!.toFixed(1)} demonstrations per query fitted the context; ${(result.wallTimeMs / 1000).toFixed(1)} s, peak RSS ${result.peakRssMiB.toFixed(0)} MiB`,
  );
  if (result.validation) console.log(`validation ${describe(result.validation)}`);
  if (result.test) console.log(`test ${describe(result.test)}`);
  model.dispose();
}

async function runFeatures(dir: string, splits: Splits, tok: Tokenizer, maxLength: number, out: string, o: Opts): Promise<void> {
  if (splits.train.kind !== 'classification') throw new UsageError('--strategy features needs labelled data (a label field)');
  checkClasses(splits);
  const pooling = o.pooling as Pooling | undefined;
  if (pooling !== undefined && !['cls', 'mean', 'last'].includes(pooling))
    throw new UsageError(`--pooling must be cls, mean or last, got ${JSON.stringify(pooling)}`);
  const model = await Model.fromPretrained(dir, { task: 'feature-extraction', ...computeOptions(o) });
  const [train, validation, test] = [splits.train, splits.validation, splits.test].map((d) => d.toExamples(tok, { maxLength }));
  console.log(
    `feature-based classification with ${dir} on ${splits.train.source}: ${train.length} train / ${validation.length} validation / ${test.length} test examples`,
  );
  const total = train.length + validation.length + test.length;
  let done = 0;
  let last = 0;
  const bar = progressBar(total, 'embed', { silent: Boolean(o.quiet) });
  const fb = new FeatureBased({
    pooling,
    C: num(o, 'C', 1),
    batchSize: num(o, 'batch-size', 32, 'int'),
    onProgress: (d) => {
      done += d < last ? d : d - last;
      last = d;
      bar.update(Math.min(done, total));
    },
  });
  let result: StrategyResult;
  try {
    result = await fb.run(model, { train, validation, test });
  } finally {
    bar.stop();
  }
  fs.mkdirSync(out, { recursive: true });
  await fb.classifier.save(path.join(out, 'classifier.json'));
  new MetricsWriter(path.join(out, 'metrics.jsonl')).write({
    step: fb.classifier.iterations,
    loss: fb.classifier.trainLoss,
    converged: fb.classifier.converged,
    validationAccuracy: result.validation?.accuracy,
    testAccuracy: result.test?.accuracy,
  });
  fs.writeFileSync(path.join(out, 'results.json'), JSON.stringify({ model: dir, data: splits.train.source, ...result }, null, 2) + '\n');
  console.log(
    `logistic regression on ${fb.classifier.dim}-d embeddings: ${result.trainableParameters.toLocaleString('en-US')} parameters, ${fb.classifier.iterations} L-BFGS evaluations, ${(result.wallTimeMs / 1000).toFixed(1)} s, peak RSS ${result.peakRssMiB.toFixed(0)} MiB`,
  );
  if (result.validation) console.log(`validation ${describe(result.validation)}`);
  if (result.test) console.log(`test ${describe(result.test)}`);
  console.log(`saved to ${out} (classifier.json, metrics.jsonl, results.json; the model itself is unchanged)`);
  model.dispose();
}

function helpText(name: string, c: Command): string {
  const width = Math.max(...Object.keys(c.help).map((k) => k.length)) + 4;
  const lines = Object.entries(c.help).map(([k, v]) => `  --${k.padEnd(width)}${v}`);
  return `tunekit ${name}: ${c.summary}\n\nusage: ${c.usage}\n\noptions:\n${lines.join('\n')}\n  --${'help'.padEnd(width)}this text\n`;
}

function mainHelp(): string {
  const cmds = Object.entries(COMMANDS)
    .map(([k, c]) => `  ${k.padEnd(14)}${c.summary}`)
    .join('\n');
  return `tunekit: finetune language models from Node.js\n\nusage: tunekit <command> [options]\n\ncommands:\n${cmds}\n\nWith no options, \`tunekit finetune\` finetunes models/tiny-distilbert on builtin:imdb-sentences and prints test accuracy.\nRun \`tunekit <command> --help\` for a command's options.\n`;
}

export async function main(argv: string[]): Promise<number> {
  let [name, ...rest] = argv;
  // A command group (`index add`) is named by its first two words.
  if (rest.length > 0 && COMMANDS[`${name} ${rest[0]}`]) name = `${name} ${rest.shift()}`;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(mainHelp());
    return name === undefined ? 2 : 0;
  }
  const cmd = COMMANDS[name];
  try {
    if (!cmd)
      throw new UsageError(`unknown command ${JSON.stringify(name)} (expected ${Object.keys(COMMANDS).join(', ')}; see tunekit --help)`);
    let values: Opts;
    let positionals: string[];
    try {
      ({ values, positionals } = parseArgs({
        args: rest,
        options: cmd.options,
        strict: true,
        allowPositionals: cmd.positionals ?? false,
      }) as {
        values: Opts;
        positionals: string[];
      });
    } catch (e) {
      throw new UsageError(`${(e as Error).message.split('\n')[0]} (see tunekit ${name} --help)`);
    }
    if (values.help) {
      process.stdout.write(helpText(name, cmd));
      return 0;
    }
    if (values.device !== undefined && values.device !== 'cpu' && values.device !== 'cuda')
      throw new UsageError(`--device must be cpu or cuda, got ${JSON.stringify(values.device)}`);
    return (await cmd.run(values, positionals)) ?? 0;
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`tunekit: ${e.message}\n`);
      return 2;
    }
    if (e instanceof TunekitError) {
      process.stderr.write(`tunekit: ${e.message}\n`);
      return 1;
    }
    process.stderr.write(`tunekit: unexpected error: ${(e as Error)?.message ?? String(e)}\n`);
    if (process.env.TUNEKIT_DEBUG) console.error(e);
    return 1;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
