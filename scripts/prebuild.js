#!/usr/bin/env node
// Makes a prebuildify prebuild (prebuilds/<platform>-<arch>/tunekit.node) that node-gyp-build loads before building.
// The prebuild links libtorch through an rpath to the libtorch it was built against (.venv or $LIBTORCH), so it is
// for machines with the same layout (CI caches, a fleet built from one image), not for publishing to npm.
'use strict';
const { spawnSync } = require('child_process');
const path = require('path');
const repo = path.resolve(__dirname, '..');
const r = spawnSync(process.execPath, [require.resolve('prebuildify/bin.js'), '--napi', '--strip', '--target', `node@${process.versions.node}`],
  { stdio: 'inherit', cwd: repo, env: { ...process.env, JOBS: 'max' } });
process.exit(r.status ?? 1);
