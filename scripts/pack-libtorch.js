#!/usr/bin/env node
// Packs a libtorch archive in the official layout (libtorch/{include,lib,share}) from an installed torch wheel, for a
// mirror (TUNEKIT_LIBTORCH_MIRROR) or an air-gapped install, and prints its SHA-256 (TUNEKIT_LIBTORCH_SHA256).
// Usage: node scripts/pack-libtorch.js OUT.zip [TORCH_DIR]   (TORCH_DIR: default the torch of ./libtorch or .venv)
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { execFileSync } = require('child_process');

const [out, torchDir] = process.argv.slice(2);
if (!out) {
  console.error('usage: node scripts/pack-libtorch.js OUT.zip [TORCH_DIR]');
  process.exit(2);
}
const root = torchDir ? path.resolve(torchDir) : require('./torch-paths').paths().root;
const stage = fs.mkdtempSync(path.join(os.tmpdir(), 'tunekit-pack-libtorch-'));
try {
  fs.mkdirSync(path.join(stage, 'libtorch'));
  for (const d of ['include', 'lib', 'share']) fs.symlinkSync(path.join(root, d), path.join(stage, 'libtorch', d));
  fs.rmSync(path.resolve(out), { force: true });
  // zip follows the staging symlinks (no -y) and stores what they point at; fast compression: .so files barely shrink.
  execFileSync('zip', ['-qr1', path.resolve(out), 'libtorch'], { cwd: stage, stdio: 'inherit' });
} finally {
  fs.rmSync(stage, { recursive: true, force: true });
}
const hash = crypto.createHash('sha256').update(fs.readFileSync(path.resolve(out))).digest('hex');
console.log(JSON.stringify({ archive: path.resolve(out), sha256: hash, bytes: fs.statSync(path.resolve(out)).size }));
