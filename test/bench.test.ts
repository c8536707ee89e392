import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { ROOT, tmpDir } from './helpers';

test('npm run bench starts and writes well-formed results (smoke config, no timing claims)', (t) => {
  const out = tmpDir('bench');
  const r = spawnSync(process.execPath, ['--require', 'tsx/cjs', path.join(ROOT, 'bench', 'run.ts'), '--smoke', '--out', out], {
    cwd: ROOT,
    encoding: 'utf8',
  });
  t.is(r.status, 0, r.stderr);
  const j = JSON.parse(fs.readFileSync(path.join(out, 'latest.json'), 'utf8'));
  t.is(j.mode, 'smoke');
  t.true(j.matmul_gflops > 0 && j.threads >= 1 && typeof j.libtorch === 'string');
  t.is(j.results.length, 1);
  const row = j.results[0];
  t.is(row.workload, 'smoke-gpt2');
  for (const side of ['tunekit', 'python']) {
    t.true(row[side].median_s > 0 && row[side].samples === 2 && row[side].peakRssMiB > 0, side);
  }
  t.regex(row.check, /^first-step loss [\d.]+ vs [\d.]+/);
  t.true(row.ratio_python_over_tunekit > 0 && row.mfu_tunekit > 0);
  t.regex(fs.readFileSync(path.join(out, 'latest.md'), 'utf8'), /\| smoke-gpt2 \|/);
});
