#!/usr/bin/env node
// Finds the libtorch tunekit builds against, in this order: $LIBTORCH (an unpacked official libtorch), ./libtorch
// (the link scripts/install.js makes to the libtorch it chose), the project's .venv torch, then the torch of the
// python3 on PATH (e.g. a CUDA torch).
// Usage: node scripts/torch-paths.js <root|include|lib|cmake|json>
'use strict';
const fs = require('fs');
const path = require('path');
const { execFileSync } = require('child_process');

const repo = path.resolve(__dirname, '..');

function fromPython(python) {
  try {
    const out = execFileSync(python, ['-c',
      'import json, os, torch; print(json.dumps({"root": os.path.dirname(torch.__file__), "version": torch.__version__, "cuda": torch.version.cuda}))'],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    return JSON.parse(out.trim());
  } catch {
    return null;
  }
}

function findTorch() {
  if (process.env.LIBTORCH) {
    const root = path.resolve(process.env.LIBTORCH);
    if (!fs.existsSync(path.join(root, 'include', 'torch'))) {
      throw new Error(`LIBTORCH=${root} does not look like an unpacked libtorch (no include/torch inside)`);
    }
    return { root, source: 'LIBTORCH' };
  }
  const link = path.join(repo, 'libtorch');
  if (fs.existsSync(path.join(link, 'include', 'torch'))) return { root: fs.realpathSync(link), source: './libtorch' };
  const venvPython = path.join(repo, '.venv', 'bin', 'python');
  if (fs.existsSync(venvPython)) {
    const t = fromPython(venvPython);
    if (t) return { ...t, source: '.venv' };
  }
  const t = fromPython('python3');
  if (t) return { ...t, source: 'python3 on PATH' };
  return null;
}

function paths() {
  const t = findTorch();
  if (!t) {
    throw new Error('tunekit: no libtorch found. Run `npm install` (it creates .venv with torch==2.13.0+cpu), ' +
      'or set LIBTORCH to an unpacked libtorch, or put a python3 with torch on PATH.');
  }
  return {
    ...t,
    include: [path.join(t.root, 'include'), path.join(t.root, 'include', 'torch', 'csrc', 'api', 'include')],
    lib: path.join(t.root, 'lib'),
    cmake: path.join(t.root, 'share', 'cmake'),
  };
}

module.exports = { paths };

if (require.main === module) {
  try {
    const p = paths();
    const what = process.argv[2] || 'json';
    if (what === 'include') console.log(p.include.join(' '));
    else if (what === 'lib') console.log(p.lib);
    else if (what === 'cmake') console.log(p.cmake);
    else if (what === 'root') console.log(p.root);
    else console.log(JSON.stringify(p, null, 2));
  } catch (e) {
    console.error(e.message);
    process.exit(1);
  }
}
