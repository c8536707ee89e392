/**
 * Every strategy a user picks by name (`tunekit finetune --strategy`, the experiment scripts): what it does, its
 * default learning rate, and how to build it. The CLI maps its flags onto these options; nothing else lists them.
 */
import { Adapter, AdapterOptions } from '../peft/adapter';
import { IA3, IA3Options } from '../peft/ia3';
import { LoRA, LoRAOptions } from '../peft/lora';
import { PrefixTuning, PrefixTuningOptions } from '../peft/prefix';
import { DEFAULT_VIRTUAL_TOKENS } from '../peft/method';
import { PromptTuning, PromptTuningOptions } from '../peft/prompt';
import type { TrainOptions } from './common';
import { FinetuneAll } from './finetune-all';
import { FinetuneHead } from './finetune-head';
import { FinetunePEFT, PeftMethod } from './lora';

/** A strategy that trains the model: whole-model finetuning, or a PEFT method (`peft: true`: it saves an adapter). */
export interface TrainingStrategy {
  summary: string;
  /** The peak learning rate unless the caller gives one. */
  lr: number;
  peft: boolean;
  /** Input positions its virtual tokens take (soft prompts, prefixes), which inputs must leave room for. */
  virtualTokens(options: StrategyOptions): number;
  create(train: TrainOptions, options: StrategyOptions): FinetuneAll | FinetuneHead | FinetunePEFT;
}

/** Each method's own options, under the strategy's name. */
export interface StrategyOptions {
  head?: { unfreezeLastBlocks?: number };
  lora?: LoRAOptions;
  adapter?: AdapterOptions;
  prefix?: PrefixTuningOptions;
  prompt?: PromptTuningOptions;
  ia3?: IA3Options;
}

function peft(
  summary: string,
  lr: number,
  method: (o: StrategyOptions) => PeftMethod,
  virtualTokens = (_: StrategyOptions) => 0,
): TrainingStrategy {
  return { summary, lr, peft: true, virtualTokens, create: (train, o) => new FinetunePEFT(method(o), train) };
}

export const FEATURES_SUMMARY = 'feature-based: embed with the frozen model, fit a logistic regression (--pooling cls|mean|last, --C)';

export const STRATEGIES: Record<string, TrainingStrategy> = {
  full: {
    summary: 'finetuning II: train every parameter',
    lr: 3e-4,
    peft: false,
    virtualTokens: () => 0,
    create: (train) => new FinetuneAll(train),
  },
  head: {
    summary: 'finetuning I: freeze the backbone, train the output layers (add --unfreeze-last-blocks N for the last blocks too)',
    lr: 1e-3,
    peft: false,
    virtualTokens: () => 0,
    create: (train, o) => new FinetuneHead({ ...train, ...o.head }),
  },
  lora: peft(
    'LoRA: freeze the model, train low-rank adapters (--lora-r, --lora-alpha, --lora-dropout, --lora-targets) and the head; --out gets a PEFT adapter',
    1e-3,
    (o) => new LoRA(o.lora),
  ),
  adapter: peft(
    'Houlsby bottleneck adapters after attention and feed-forward (--reduction-factor or --bottleneck-size, --nonlinearity) and the head',
    1e-3,
    (o) => new Adapter(o.adapter),
  ),
  prefix: peft(
    'prefix tuning: trainable key/value prefixes in every layer (--num-virtual-tokens, --prefix-projection) and the head',
    1e-2,
    (o) => new PrefixTuning(o.prefix),
    (o) => o.prefix?.numVirtualTokens ?? DEFAULT_VIRTUAL_TOKENS,
  ),
  prompt: peft(
    'soft prompt tuning: trainable virtual tokens before the input (--num-virtual-tokens, --prompt-init-text) and the head',
    1e-2,
    (o) => new PromptTuning(o.prompt),
    (o) => o.prompt?.numVirtualTokens ?? DEFAULT_VIRTUAL_TOKENS,
  ),
  ia3: peft(
    "(IA)^3: learned vectors rescaling keys, values and feed-forward (the family's PEFT defaults) and the head; --out gets a PEFT adapter",
    1e-3,
    (o) => new IA3(o.ia3),
  ),
};
