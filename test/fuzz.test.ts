// The fuzzing corpus and a short seeded mutation run of every reader of untrusted files (the long runs: npm run fuzz).
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { TunekitError } from '../lib';
import { readHeader } from '../lib/safetensors';
import { fuzzReaders, SAFETENSORS_CORPUS } from './fuzz/readers';
import { modelDir, tmpDir } from './helpers';

test('every input of the safetensors corpus (seeds and past findings) parses or is a TunekitError', (t) => {
  const files = fs.readdirSync(SAFETENSORS_CORPUS);
  t.true(files.length >= 4);
  let parsed = 0;
  for (const f of files) {
    try {
      readHeader(path.join(SAFETENSORS_CORPUS, f));
      parsed++;
    } catch (e) {
      t.true(e instanceof TunekitError, `${f}: ${e}`);
    }
  }
  t.true(parsed >= 4, 'the seeds themselves are valid files');
});

test('seeded mutations of safetensors files, config.json, adapter_config.json and tokenizer.json: a result or a TunekitError', async (t) => {
  await fuzzReaders(
    { model: modelDir('gpt2-causal-lm'), tokenizer: modelDir('tokenizer-bpe'), work: tmpDir('fuzz') },
    { runs: 400, seed: 20261128, log: (s) => t.log(s) },
  );
  t.pass();
});
