/**
 * Peak memory of a LoRA PPO run whose reference is the policy with its adapter off, against the same run with a
 * separate reference copy of the weights (issue 13). Each configuration runs in its own process on the benchmark's
 * GPT-2 (bench/.cache, written by `npm run bench`); prints one JSON line per configuration and the difference.
 *   node --require tsx/cjs bench/ppo-memory.ts [ITERATIONS]
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { LoRA, Model, PPO } from '../lib';

async function child(mode: 'adapter-off' | 'copy', iterations: number) {
  const cache = path.join(__dirname, '.cache');
  const dir = fs.readdirSync(cache).find((d) => d.startsWith('train-gpt2-'));
  if (!dir) throw new Error('run `npm run bench -- --workloads train-gpt2` first: it writes the benchmark model');
  const modelDir = path.join(cache, dir, 'model');
  const b = JSON.parse(fs.readFileSync(path.join(cache, dir, 'batch.json'), 'utf8'));
  const queries: number[][] = b.input_ids.slice(0, 8).map((r: number[]) => r.slice(0, 16));
  const policy = await Model.fromPretrained(modelDir);
  await new LoRA({ r: 8, alpha: 16, targetModules: ['c_attn'] }).apply(policy);
  const reference = mode === 'copy' ? await Model.fromPretrained(modelDir) : undefined;
  const ppo = await PPO.create(policy, {
    rewardFn: (s) => s.map((x) => (x.ids.reduce((a, v) => a + v, 0) % 7) / 7),
    responseLength: 32,
    temperature: 1,
    lr: 1e-4,
    ...(reference ? { reference } : {}),
  });
  for (let i = 0; i < iterations; i++) await ppo.step(await ppo.rollout(queries));
  console.log(JSON.stringify({ mode, peakRssMiB: process.resourceUsage().maxRSS / 1024, params: policy.countParameters() }));
}

function main() {
  const [mode, n] = process.argv.slice(2);
  if (mode === 'adapter-off' || mode === 'copy') return child(mode, Number(n));
  const iterations = Number(mode ?? 3);
  const rows = (['adapter-off', 'copy'] as const).map((m) => {
    const r = spawnSync(process.execPath, ['--require', 'tsx/cjs', __filename, m, String(iterations)], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(r.stderr);
    return JSON.parse(r.stdout.trim().split('\n').pop()!);
  });
  rows.forEach((r) => console.log(JSON.stringify(r)));
  console.log(`a separate reference copy costs ${(rows[1].peakRssMiB - rows[0].peakRssMiB).toFixed(0)} MiB more peak RSS`);
}

Promise.resolve(main()).catch((e) => {
  console.error(e instanceof Error ? e.message : String(e));
  process.exit(1);
});
