#!/usr/bin/env node
// Builds the addon with CMake through cmake-js (the path for CUDA libtorch builds); output: build/Release/tunekit.node.
'use strict';
const { spawnSync } = require('child_process');
const path = require('path');
const repo = path.resolve(__dirname, '..');
const args = [require.resolve('cmake-js/bin/cmake-js'), 'rebuild', '--parallel', String(require('os').cpus().length),
  '--CDTUNEKIT_TESTS=OFF', ...process.argv.slice(2)];
const r = spawnSync(process.execPath, args, { stdio: 'inherit', cwd: repo });
process.exit(r.status ?? 1);
