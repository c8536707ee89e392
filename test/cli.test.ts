import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { STRATEGIES } from '../lib/strategies';
import { ROOT, tmpDir } from './helpers';

const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');
const run = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', cwd: tmpDir('cli-cwd') });

/** One clear line on stderr, a non-zero exit, no stack trace. */
function failsCleanly(t: any, r: ReturnType<typeof run>, code: number, pattern: RegExp) {
  t.is(r.status, code, r.stderr);
  const lines = r.stderr.trim().split('\n');
  t.is(lines.length, 1, r.stderr);
  t.regex(lines[0], /^tunekit: /);
  t.regex(lines[0], pattern);
  t.notRegex(r.stderr, /\n\s+at /);
}

/** Runs the CLI in a child process and kills it with SIGKILL as soon as `file` exists; resolves to the exit signal. */
async function killOnceWritten(args: string[], file: string): Promise<NodeJS.Signals | null> {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: 'ignore' });
  const exited = new Promise<NodeJS.Signals | null>((res) => child.on('exit', (_code, signal) => res(signal)));
  while (!fs.existsSync(file) && child.exitCode === null) await new Promise((res) => setTimeout(res, 5));
  child.kill('SIGKILL');
  return exited;
}

/**
 * Runs the command `args(out)` builds to its end in one folder, and in another kills it with SIGKILL as soon as its
 * first checkpoint is written; returns both --out folders.
 */
async function unbrokenAndKilled(t: ExecutionContext, args: (out: string) => string[], name: string) {
  const whole = path.join(tmpDir(`${name}-whole`), 'run');
  t.is(run(...args(whole)).status, 0);
  const out = path.join(tmpDir(`${name}-killed`), 'run');
  t.is(
    await killOnceWritten(args(out), path.join(out, 'checkpoints', 'latest.json')),
    'SIGKILL',
    'the run must be killed before it finishes, or this test proves nothing',
  );
  return { whole, out };
}

/** The step of every row of --out's metrics.jsonl. */
function stepsLogged(out: string): number[] {
  return fs
    .readFileSync(path.join(out, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l).step);
}

test('--help on each command', (t) => {
  for (const cmd of ['finetune', 'evaluate', 'generate']) {
    const r = run(cmd, '--help');
    t.is(r.status, 0);
    t.regex(r.stdout, new RegExp(`^tunekit ${cmd}: `));
    t.regex(r.stdout, /--model/);
  }
  t.regex(run('finetune', '--help').stdout, /--strategy .*full = /);
  const top = run('--help');
  t.is(top.status, 0);
  t.regex(top.stdout, /finetune .*\n.*evaluate/);
});

test('bad arguments: one line, non-zero exit, no stack trace', (t) => {
  failsCleanly(
    t,
    run('finetune', '--strategy', 'magic'),
    2,
    /--strategy magic: unknown strategy \(expected one of features, icl, full, head, lora, adapter, prefix, prompt/,
  );
  failsCleanly(t, run('finetune', '--model', '/no/such/model'), 2, /--model \/no\/such\/model: no such folder/);
  failsCleanly(t, run('finetune', '--data', '/no/such.jsonl'), 2, /no such file/);
  failsCleanly(t, run('finetune', '--epochs', 'many'), 2, /--epochs must be an integer/);
  failsCleanly(t, run('finetune', '--precision', 'fp8'), 2, /--precision must be one of 32-true, bf16-mixed, bf16-true, 16-mixed/);
  failsCleanly(t, run('finetune', '--precision', '16-mixed'), 1, /'16-mixed' \(float16 with loss scaling\) runs on CUDA only/);
  failsCleanly(t, run('finetune', '--frobnicate'), 2, /Unknown option '--frobnicate'/);
  failsCleanly(t, run('train'), 2, /unknown command "train"/);
  failsCleanly(t, run('generate', '--model', path.join(ROOT, 'models', 'tiny-gpt2')), 2, /--prompt TEXT is required/);
  const dir = tmpDir('cli-data');
  const f = path.join(dir, 'reviews.jsonl');
  fs.writeFileSync(f, '{"text":"fine","label":1}\n{"review":"no text here","label":0}\n');
  failsCleanly(t, run('finetune', '--data', f), 1, /reviews\.jsonl:2: no "text" field/);
});

test('finetune writes the model, metrics.jsonl, a loss curve and results; evaluate agrees with it', (t) => {
  const out = path.join(tmpDir('cli-run'), 'run');
  const r = run('finetune', '--max-steps', '4', '--out', out, '--quiet');
  t.is(r.status, 0, r.stderr);
  const m = r.stdout.match(/test accuracy ([\d.]+)% \(loss ([\d.]+), 200 examples\)/);
  t.truthy(m, r.stdout);
  for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'metrics.jsonl', 'loss.svg', 'results.json'])
    t.true(fs.existsSync(path.join(out, f)), f);
  const rows = fs
    .readFileSync(path.join(out, 'metrics.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  t.deepEqual(
    rows.map((x) => x.step),
    [1, 2, 3, 4],
  );
  t.true(rows.every((x) => Number.isFinite(x.loss) && x.tokensPerSecond > 0));
  t.regex(fs.readFileSync(path.join(out, 'loss.svg'), 'utf8'), /^<svg[\s\S]*<\/svg>\s*$/);
  const config = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
  t.deepEqual(config.architectures, ['DistilBertForSequenceClassification']);
  t.deepEqual(config.id2label, { 0: 'negative', 1: 'positive' });
  const ev = run('evaluate', '--model', out, '--data', 'builtin:imdb-sentences');
  t.is(ev.status, 0, ev.stderr);
  t.regex(ev.stdout, new RegExp(`test accuracy ${m![1].replace('.', '\\.')}% \\(loss ${m![2].replace('.', '\\.')}, 200 examples\\)`));
});

// Every PEFT strategy of the registry, as the CLI builds it: it trains, saves a PEFT adapter, and evaluate with that
// adapter reproduces the test accuracy the run reported.
for (const [name] of Object.entries(STRATEGIES).filter(([, s]) => s.peft)) {
  test(`finetune --strategy ${name} saves an adapter that evaluate --adapter reproduces`, (t) => {
    const out = path.join(tmpDir(`cli-${name}`), 'run');
    const r = run('finetune', '--strategy', name, '--max-steps', '2', '--out', out, '--quiet');
    t.is(r.status, 0, r.stderr);
    const m = r.stdout.match(/test accuracy ([\d.]+)% \(loss ([\d.]+), 200 examples\)/);
    t.truthy(m, r.stdout);
    t.true(fs.existsSync(path.join(out, 'adapter_config.json')) && fs.existsSync(path.join(out, 'adapter_model.safetensors')));
    const ev = run(
      'evaluate',
      '--model',
      path.join(ROOT, 'models', 'tiny-distilbert'),
      '--adapter',
      out,
      '--data',
      'builtin:imdb-sentences',
    );
    t.is(ev.status, 0, ev.stderr);
    t.regex(ev.stdout, new RegExp(`test accuracy ${m![1].replace('.', '\\.')}% \\(loss ${m![2].replace('.', '\\.')}, 200 examples\\)`));
  });
}

test('generate continues a prompt, in float32 and in bf16', (t) => {
  for (const precision of ['32-true', 'bf16-mixed', 'bf16-true']) {
    const r = run(
      'generate',
      '--model',
      path.join(ROOT, 'models', 'tiny-gpt2'),
      '--prompt',
      'The ship',
      '--max-new-tokens',
      '8',
      '--precision',
      precision,
    );
    t.is(r.status, 0, r.stderr);
    t.regex(r.stdout, /^The ship\S*\s+\S+/, precision);
  }
});

test('finetune --strategy icl and prompt-search classify in context from the command line and write results.json', (t) => {
  const gpt2 = path.join(ROOT, 'models', 'tiny-gpt2');
  const icl = tmpDir('cli-icl');
  const r = run(
    'finetune',
    '--model',
    gpt2,
    '--strategy',
    'icl',
    '--shots',
    '2',
    '--selection',
    'balanced',
    '--calibrate',
    '--max-length',
    '24',
    '--quiet',
    '--out',
    icl,
    '--overwrite',
  );
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /test accuracy \d+\.\d%/);
  const res = JSON.parse(fs.readFileSync(path.join(icl, 'results.json'), 'utf8'));
  t.is(res.strategy, 'icl');
  t.deepEqual([res.shots, res.selection, res.calibrate, res.labelWords], [2, 'balanced', true, ['negative', 'positive']]);
  t.is(res.shotsUsed, 2);
  t.is(res.test.examples, 200);

  const ps = tmpDir('cli-prompt-search');
  const s = run(
    'prompt-search',
    '--model',
    gpt2,
    '--iterations',
    '1',
    '--beam',
    '1',
    '--candidates',
    '2',
    '--dev-size',
    '8',
    '--label-candidates',
    '1',
    '--quiet',
    '--out',
    ps,
    '--overwrite',
  );
  t.is(s.status, 0, s.stderr);
  t.regex(s.stdout, /^initial: .*\nbest: /m);
  const found = JSON.parse(fs.readFileSync(path.join(ps, 'results.json'), 'utf8'));
  t.is(found.candidates[0].edit, 'initial');
  t.truthy(found.initial.test && found.best.test);

  failsCleanly(
    t,
    run('prompt-search', '--model', gpt2, '--template', 'no slots', '--out', tmpDir('cli-ps-bad')),
    1,
    /template must hold \{text\} once/,
  );
});

// Serial: the other tests here block the event loop in spawnSync, which would stall the polling for the checkpoint.
test.serial(
  'finetune killed with -9 between checkpoints resumes with --resume and ends on the same weights as an unbroken run',
  async (t) => {
    const args = (out: string) => [
      'finetune',
      '--max-steps',
      '16',
      '--batch-size',
      '8',
      '--checkpoint-every',
      '2',
      '--out',
      out,
      '--quiet',
    ];
    const { whole, out } = await unbrokenAndKilled(t, args, 'cli');
    failsCleanly(
      t,
      run(...args(out)),
      2,
      /--out .* is not empty: add --resume to continue its run from the last checkpoint, or --overwrite/,
    );
    const resumed = run(...args(out), '--resume');
    t.is(resumed.status, 0, resumed.stderr);
    const results = JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8'));
    t.true(results.resumedFrom >= 2 && results.steps === 16, JSON.stringify(results));
    t.true(fs.readFileSync(path.join(whole, 'model.safetensors')).equals(fs.readFileSync(path.join(out, 'model.safetensors'))));
    t.deepEqual(
      stepsLogged(out),
      Array.from({ length: 16 }, (_, i) => i + 1),
    );
  },
);

test('the task is what the data says or a clear error: one class, a misspelled label field, an unlabelled row, a file as --out', (t) => {
  const dir = tmpDir('cli-task');
  const file = (name: string, rows: object[]) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
    return f;
  };
  const texts = Array.from({ length: 12 }, (_, i) => `review number ${i}`);
  const same = file(
    'same.jsonl',
    texts.map((text) => ({ text, label: 'pos' })),
  );
  failsCleanly(t, run('finetune', '--data', same), 2, /every training label is "pos": a classifier needs at least two classes/);
  const labelled = file(
    'ok.jsonl',
    texts.map((text, i) => ({ text, label: i % 2 })),
  );
  failsCleanly(t, run('finetune', '--data', labelled, '--label-field', 'sentiment'), 1, /no row has the label field "sentiment"/);
  const holed = file('holed.jsonl', [...texts.map((text, i) => ({ text, label: i % 2 })), { text: 'no label here' }]);
  failsCleanly(t, run('finetune', '--data', holed), 1, /holed\.jsonl:13: no "label" label, but 12 of the 13 rows have one/);
  const notDir = path.join(dir, 'a-file');
  fs.writeFileSync(notDir, 'x');
  failsCleanly(t, run('finetune', '--out', notDir), 2, /--out .*a-file is a file, not a folder/);
  failsCleanly(
    t,
    run('finetune', '--strategy', 'prompt', '--num-virtual-tokens', '200', '--out', path.join(dir, 'vt')),
    2,
    /--num-virtual-tokens 200 leaves no room for the text: the model has \d+ positions/,
  );
  const gpt2 = path.join(ROOT, 'models', 'tiny-gpt2');
  failsCleanly(t, run('generate', '--model', gpt2, '--prompt', 'hi', '--max-new-tokens', '0'), 1, /maxNewTokens must be >= 1, got 0/);
});

test('reward, dpo, ppo and grpo run from the command line and write their model, metrics, curves and results', (t) => {
  const dir = tmpDir('cli-rlhf');
  const pairs = path.join(dir, 'pairs.jsonl');
  const rows = Array.from({ length: 12 }, (_, i) => ({
    prompt: `Review ${i}:`,
    chosen: ' a wonderful, moving film',
    rejected: ' a dull mess',
  }));
  fs.writeFileSync(pairs, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  const gpt2 = path.join(ROOT, 'models', 'tiny-gpt2');
  const distilbert = path.join(ROOT, 'models', 'tiny-distilbert');
  const runs: [string, string[]][] = [
    ['reward', ['--model', distilbert, '--data', pairs, '--batch-size', '4']],
    ['dpo', ['--model', gpt2, '--data', pairs, '--batch-size', '4', '--lora']],
    [
      'ppo',
      ['--model', gpt2, '--reward-model', distilbert, '--reward-label', '1', '--steps', '2', '--batch-size', '4', '--response-length', '4'],
    ],
    [
      'grpo',
      [
        '--model',
        gpt2,
        '--reward-model',
        distilbert,
        '--reward-label',
        '1',
        '--steps',
        '2',
        '--batch-size',
        '2',
        '--num-generations',
        '2',
        '--response-length',
        '4',
      ],
    ],
  ];
  // 11 training pairs in batches of 4, or 2 iterations; each run checkpoints every step.
  const steps: Record<string, number> = { reward: 3, dpo: 3, ppo: 2, grpo: 2 };
  for (const [cmd, args] of runs) {
    const out = path.join(dir, cmd);
    const r = run(cmd, ...args, '--checkpoint-every', '1', '--out', out, '--quiet');
    t.is(r.status, 0, `${cmd}: ${r.stderr}`);
    for (const f of ['metrics.jsonl', 'curves.svg', 'results.json']) t.true(fs.existsSync(path.join(out, f)), `${cmd}: ${f}`);
    t.true(fs.existsSync(path.join(out, cmd === 'dpo' ? 'adapter_model.safetensors' : 'model.safetensors')), cmd);
    const latest = JSON.parse(fs.readFileSync(path.join(out, 'checkpoints', 'latest.json'), 'utf8'));
    t.is(latest.checkpoint, `checkpoint-${steps[cmd]}`, cmd);
    // Resuming a finished run finds its last checkpoint and has nothing left to train: no metrics row is written.
    const logged = fs.statSync(path.join(out, 'metrics.jsonl')).mtimeMs;
    const resumed = run(cmd, ...args, '--checkpoint-every', '1', '--out', out, '--quiet', '--resume');
    t.is(resumed.status, 0, `${cmd} --resume: ${resumed.stderr}`);
    t.is(fs.statSync(path.join(out, 'metrics.jsonl')).mtimeMs, logged, `${cmd}: the resumed run trained again`);
    t.deepEqual(
      stepsLogged(out),
      Array.from({ length: steps[cmd] }, (_, i) => i + 1),
      cmd,
    );
  }
  failsCleanly(t, run('ppo', '--model', gpt2, '--out', path.join(dir, 'x')), 2, /--reward-model DIR is required/);
  failsCleanly(
    t,
    run('ppo', '--model', gpt2, '--reward-model', distilbert, '--reward-label', 'joy', '--out', path.join(dir, 'y')),
    2,
    /--reward-label joy: the reward model's classes are/,
  );
});

test.serial('tunekit ppo killed with -9 after a checkpoint resumes with --resume to the weights of an unbroken run', async (t) => {
  const gpt2 = path.join(ROOT, 'models', 'tiny-gpt2');
  const distilbert = path.join(ROOT, 'models', 'tiny-distilbert');
  const args = (out: string) => [
    'ppo',
    '--model',
    gpt2,
    '--reward-model',
    distilbert,
    '--reward-label',
    '1',
    '--steps',
    '6',
    '--batch-size',
    '4',
    '--response-length',
    '4',
    '--checkpoint-every',
    '1',
    '--out',
    out,
    '--quiet',
  ];
  const { whole, out } = await unbrokenAndKilled(t, args, 'cli-ppo');
  const resumed = run(...args(out), '--resume');
  t.is(resumed.status, 0, resumed.stderr);
  t.true(fs.readFileSync(path.join(whole, 'model.safetensors')).equals(fs.readFileSync(path.join(out, 'model.safetensors'))));
  t.deepEqual(stepsLogged(out), [1, 2, 3, 4, 5, 6]);
});
