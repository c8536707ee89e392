// Prints how much a fresh process's peak RSS grows while it loads the checkpoint in argv[2] (test/validation.test.ts).
import fs from 'node:fs';
import path from 'node:path';
import { Model } from '../../lib';

(async () => {
  const dir = process.argv[2];
  // Load libtorch and run its first allocations before the baseline.
  (await Model.fromConfig({ model_type: 'gpt2', vocab_size: 64, n_positions: 16, n_embd: 16, n_layer: 1, n_head: 2 })).dispose();
  const before = process.resourceUsage().maxRSS * 1024;
  const model = await Model.fromPretrained(dir);
  const growth = process.resourceUsage().maxRSS * 1024 - before;
  console.log(JSON.stringify({ bytes: fs.statSync(path.join(dir, 'model.safetensors')).size, growth }));
  model.dispose();
})();
