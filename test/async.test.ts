// Compute runs off the event loop, calls are queued per process, and memory does not leak.
import test from 'ava';
import { AdamW, Model } from '../lib';
import { ATTENTION_MASK, INPUT_IDS, LM_LABELS, modelDir } from './helpers';

test('timers keep firing while a training step runs', async (t) => {
  const model = await Model.fromPretrained(modelDir('llama-causal-lm'));
  await model.train();
  const ids = Array.from({ length: 16 }, (_, i) => Array.from({ length: 60 }, (_, j) => (i * 7 + j * 13) % 96));
  const batch = { inputIds: ids, labels: ids };
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const start = Date.now();
  let steps = 0;
  while (Date.now() - start < 400 || steps < 3) {
    await model.backward(batch);
    steps++;
  }
  clearInterval(timer);
  const elapsed = Date.now() - start;
  t.log(`${steps} forward+backward in ${elapsed} ms; the 1 ms timer fired ${ticks} times`);
  // A blocked loop would fire about once per step; a free one fires many times per step.
  t.true(ticks > steps * 3, `ticks ${ticks}, steps ${steps}`);
  model.dispose();
});

test('calls a caller forgot to await run one after another, in order', async (t) => {
  const model = await Model.fromPretrained(modelDir('gpt2-causal-lm'));
  await model.train();
  const opt = new AdamW(model, { lr: 0.05, weightDecay: 0 });
  const batch = { inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK, labels: LM_LABELS };
  // Sequential reference.
  const seq: number[] = [];
  const fresh = await Model.fromPretrained(modelDir('gpt2-causal-lm'));
  await fresh.train();
  const opt2 = new AdamW(fresh, { lr: 0.05, weightDecay: 0 });
  for (let i = 0; i < 4; i++) {
    seq.push((await fresh.backward(batch)).loss);
    await opt2.step();
    await opt2.zeroGrad();
  }
  // Fire-and-forget: if these overlapped, gradients and updates would interleave and the losses would differ.
  const pending: Promise<{ loss: number }>[] = [];
  const others: Promise<unknown>[] = [];
  for (let i = 0; i < 4; i++) {
    pending.push(model.backward(batch));
    others.push(opt.step(), opt.zeroGrad());
  }
  const losses = (await Promise.all(pending)).map((r) => r.loss);
  await Promise.all(others);
  t.deepEqual(losses, seq);
  model.dispose();
  fresh.dispose();
});

test('200 forward+backward calls grow RSS by less than 50 MB', async (t) => {
  const model = await Model.fromPretrained(modelDir('gpt2-causal-lm'));
  await model.train();
  const batch = { inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK, labels: LM_LABELS };
  for (let i = 0; i < 20; i++) {
    await model.backward(batch);
    await model.forward(batch);
    await model.zeroGrad();
  }
  global.gc?.();
  const before = process.memoryUsage().rss;
  for (let i = 0; i < 200; i++) {
    await model.backward(batch);
    await model.forward(batch);
    await model.zeroGrad();
  }
  global.gc?.();
  const grown = (process.memoryUsage().rss - before) / 1e6;
  t.log(`RSS grew ${grown.toFixed(1)} MB over 200 calls`);
  t.true(grown < 50);
  model.dispose();
});
