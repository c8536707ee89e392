#!/usr/bin/env node
// `npm install` entry point: find or fetch a libtorch, link it as ./libtorch, then load a prebuild or build the addon.
//   1. $LIBTORCH set: that unpacked libtorch.
//   2. TUNEKIT_USE_SYSTEM_TORCH=1: the torch of python3 on PATH (e.g. a CUDA torch).
//   3. a git checkout (development): .venv (git-ignored) with requirements.txt, i.e. torch==2.13.0+cpu and the reference
//      stack the tests compare against.
//   4. a dependency in someone's project: the shared per-user cache of the official prebuilt libtorch
//      (scripts/libtorch.js: $TUNEKIT_HOME/libtorch/<version>-<variant>, fetched once, checked by SHA-256); if that
//      cannot be had, .venv with torch alone from the PyTorch CPU wheel index ($TUNEKIT_TORCH_INDEX overrides it).
// ./libtorch is a symlink to the chosen libtorch: the addon's rpath ($ORIGIN/../../libtorch/lib) reaches it from
// build/Release/ and from prebuilds/<platform>/ alike, so a prebuild works on any machine that has the libtorch.
// node-gyp-build then loads prebuilds/ if one matches, else runs node-gyp rebuild with all cores.
'use strict';
const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');

const repo = path.resolve(__dirname, '..');
const venv = path.join(repo, '.venv');
const py = path.join(venv, 'bin', 'python');
const link = path.join(repo, 'libtorch');
const TORCH_INDEX = process.env.TUNEKIT_TORCH_INDEX || 'https://download.pytorch.org/whl/cpu';
/** A checkout being developed (tests, reference stack, rebuilds), not a dependency in someone's project. */
const DEVELOPMENT = fs.existsSync(path.join(repo, '.git')) || fs.existsSync(path.join(repo, 'test', 'reference'));
/** binding.gyp's precompiled libtorch header: about 500 MB that only a rebuild reads. */
const PCH_DIR = path.join(repo, 'build', 'Release', 'obj.target', 'tunekit', 'geni', 'pch');

function run(cmd, args, opts = {}) {
  console.log(`tunekit install: ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: repo, ...opts });
  if (r.status !== 0) {
    console.error(`tunekit install: \`${cmd} ${args.join(' ')}\` failed (exit ${r.status ?? r.signal})`);
    process.exit(1);
  }
}

function torchRoot(python) {
  const r = spawnSync(python, ['-c', 'import os, torch; print(os.path.dirname(torch.__file__))'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

/** requirements.txt into .venv: all of it for development, the torch line alone for a consumer. */
function venvTorch(dev) {
  if (!fs.existsSync(py)) run('python3', ['-m', 'venv', venv]);
  const reqs = fs
    .readFileSync(path.join(repo, 'requirements.txt'), 'utf8')
    .split('\n')
    .map((l) => l.replace(/#.*/, '').trim())
    .filter(Boolean)
    .filter((l) => dev || l.startsWith('torch'));
  const stamp = path.join(venv, '.tunekit-requirements');
  const root = torchRoot(py);
  if (!(fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === reqs.join('\n') && root)) {
    // `+cpu` wheels live on PyTorch's index, not PyPI. Few retries: without a network pip then falls through to the
    // indexes it is configured with quickly.
    const index = dev ? [] : ['--extra-index-url', TORCH_INDEX];
    run(py, ['-m', 'pip', 'install', '--retries', '1', '--timeout', '15', '--disable-pip-version-check', ...index, ...reqs]);
    fs.writeFileSync(stamp, reqs.join('\n'));
  }
  return torchRoot(py);
}

async function resolveLibtorch() {
  if (process.env.LIBTORCH) {
    console.log(`tunekit install: using LIBTORCH=${process.env.LIBTORCH}`);
    return path.resolve(process.env.LIBTORCH);
  }
  if (process.env.TUNEKIT_USE_SYSTEM_TORCH === '1') {
    const root = torchRoot('python3');
    if (!root) throw new Error('TUNEKIT_USE_SYSTEM_TORCH=1 but python3 on PATH has no torch');
    return root;
  }
  if (DEVELOPMENT) return venvTorch(true);
  try {
    return await require('./libtorch').fetchLibtorch();
  } catch (e) {
    console.warn(`tunekit install: no prebuilt libtorch (${e.message}); installing the torch wheel into .venv instead`);
    return venvTorch(false);
  }
}

function linkLibtorch(root) {
  if (!root || !fs.existsSync(path.join(root, 'include', 'torch')) || !fs.existsSync(path.join(root, 'lib')))
    throw new Error(`${root} is not a libtorch (it needs include/torch and lib)`);
  const tmp = `${link}.tmp-${process.pid}`;
  fs.rmSync(tmp, { force: true });
  fs.symlinkSync(root, tmp);
  fs.renameSync(tmp, link);
  console.log(`tunekit install: libtorch -> ${root}`);
}

function build() {
  const force = process.argv.includes('--force');
  const env = { ...process.env, JOBS: process.env.JOBS || 'max' };
  // Without a network node-gyp needs Node's headers from disk: this Node's own install has them when it was built so.
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  if (!env.npm_config_nodedir && fs.existsSync(path.join(prefix, 'include', 'node', 'node_api.h'))) env.npm_config_nodedir = prefix;
  if (force) {
    run(process.execPath, [require.resolve('node-gyp/bin/node-gyp.js'), 'rebuild', '--jobs', 'max'], { env });
  } else {
    run(process.execPath, [require.resolve('node-gyp-build/bin.js')], { env });
  }
  if (!DEVELOPMENT) fs.rmSync(PCH_DIR, { recursive: true, force: true });
}

resolveLibtorch()
  .then((root) => {
    linkLibtorch(root);
    build();
  })
  .catch((e) => {
    console.error(`tunekit install: ${e.message}`);
    process.exit(1);
  });
