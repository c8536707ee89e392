#!/usr/bin/env node
// `npm install` entry point: make sure a libtorch exists, then build (or load a prebuild of) the addon.
//   1. $LIBTORCH set: use that unpacked libtorch, no Python needed.
//   2. otherwise: create .venv (git-ignored) and pip-install requirements.txt into it. In a git checkout that is
//      everything (torch==2.13.0+cpu plus the reference stack the tests use); as a dependency, torch alone.
//      TUNEKIT_USE_SYSTEM_TORCH=1 skips this and uses the torch of python3 on PATH (e.g. a CUDA torch).
//   3. node-gyp-build: loads prebuilds/ if one matches, else runs node-gyp rebuild with all cores.
'use strict';
const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');

const repo = path.resolve(__dirname, '..');
const venv = path.join(repo, '.venv');
const py = path.join(venv, 'bin', 'python');

function run(cmd, args, opts = {}) {
  console.log(`tunekit install: ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: repo, ...opts });
  if (r.status !== 0) {
    console.error(`tunekit install: \`${cmd} ${args.join(' ')}\` failed (exit ${r.status ?? r.signal})`);
    process.exit(1);
  }
}

function hasTorch(python) {
  return spawnSync(python, ['-c', 'import torch'], { stdio: 'ignore' }).status === 0;
}

function ensureVenv() {
  if (process.env.LIBTORCH) {
    console.log(`tunekit install: using LIBTORCH=${process.env.LIBTORCH}`);
    return;
  }
  if (process.env.TUNEKIT_USE_SYSTEM_TORCH === '1') {
    if (!hasTorch('python3')) {
      console.error('tunekit install: TUNEKIT_USE_SYSTEM_TORCH=1 but python3 on PATH has no torch');
      process.exit(1);
    }
    return;
  }
  if (!fs.existsSync(py)) run('python3', ['-m', 'venv', venv]);
  const dev = fs.existsSync(path.join(repo, '.git')) || fs.existsSync(path.join(repo, 'test', 'reference'));
  const reqs = fs.readFileSync(path.join(repo, 'requirements.txt'), 'utf8').split('\n')
    .map((l) => l.replace(/#.*/, '').trim()).filter(Boolean).filter((l) => dev || l.startsWith('torch'));
  const stamp = path.join(venv, '.tunekit-requirements');
  if (fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === reqs.join('\n') && hasTorch(py)) return;
  // Few retries: on a machine without PyPI, pip then falls through to its configured local indexes quickly.
  run(py, ['-m', 'pip', 'install', '--retries', '1', '--timeout', '15', '--disable-pip-version-check', ...reqs]);
  fs.writeFileSync(stamp, reqs.join('\n'));
}

function build() {
  const force = process.argv.includes('--force');
  const env = { ...process.env, JOBS: process.env.JOBS || 'max' };
  if (force) {
    run(process.execPath, [require.resolve('node-gyp/bin/node-gyp.js'), 'rebuild', '--jobs', 'max'], { env });
  } else {
    run(process.execPath, [require.resolve('node-gyp-build/bin.js')], { env });
  }
}

ensureVenv();
build();
