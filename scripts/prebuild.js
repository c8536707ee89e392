#!/usr/bin/env node
// Makes a prebuildify prebuild (prebuilds/<platform>-<arch>/node.napi.node) that node-gyp-build loads before building.
// The addon finds libtorch only through its rpath $ORIGIN/../../libtorch/lib, i.e. the package's ./libtorch link that
// scripts/install.js makes to the libtorch it resolved, so a prebuild works on any machine with the same libtorch
// version and variant (in the shared cache, in LIBTORCH, or in .venv).
'use strict';
const { spawnSync } = require('child_process');
const path = require('path');
const repo = path.resolve(__dirname, '..');
const r = spawnSync(process.execPath, [require.resolve('prebuildify/bin.js'), '--napi', '--strip', '--target', `node@${process.versions.node}`],
  { stdio: 'inherit', cwd: repo, env: { ...process.env, JOBS: 'max' } });
process.exit(r.status ?? 1);
