import { execFileSync, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import test, { ExecutionContext } from 'ava';
import { ROOT, tmpDir } from './helpers';

// The consumer's path, end to end: the packed tarball installed into a new project, with libtorch fetched from a
// mirror on the loopback address (an archive packed from the wheel's libtorch) into a fresh shared cache, and a
// prebuild in the tarball, so that nothing is compiled and no Python is involved.
const PIN = JSON.parse(fs.readFileSync(path.join(ROOT, 'scripts', 'libtorch.json'), 'utf8'));

function packTarball(out: string): string {
  // The prebuild is this checkout's own addon, which links libtorch only through $ORIGIN/../../libtorch/lib.
  const prebuild = path.join(ROOT, 'prebuilds', `${process.platform}-${process.arch}`);
  fs.mkdirSync(prebuild, { recursive: true });
  fs.copyFileSync(path.join(ROOT, 'build', 'Release', 'tunekit.node'), path.join(prebuild, 'node.napi.node'));
  try {
    const r = JSON.parse(execFileSync('npm', ['pack', '--json', '--pack-destination', out], { cwd: ROOT, encoding: 'utf8' }));
    return path.join(out, r[0].filename);
  } finally {
    fs.rmSync(path.join(ROOT, 'prebuilds'), { recursive: true, force: true });
  }
}

async function serveFile(t: ExecutionContext, urlPath: string, file: string): Promise<string> {
  const server = http.createServer((req, res) => {
    if (req.url !== urlPath) return res.writeHead(404).end();
    res.writeHead(200, { 'content-length': fs.statSync(file).size });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
}

test('npm install of the packed tarball: libtorch from the mirror into the shared cache, the prebuild loaded, nothing compiled, a LoRA step trains', async (t) => {
  const work = tmpDir('package');
  const tarball = packTarball(work);
  const listing = execFileSync('tar', ['tzf', tarball], { encoding: 'utf8' }).split('\n').filter(Boolean);
  for (const f of ['dist/index.js', 'scripts/install.js', 'scripts/libtorch.js', 'native/core/api.h', 'models/tiny-gpt2/config.json'])
    t.true(listing.includes(`package/${f}`), `${f} is missing from the tarball`);
  t.true(listing.some((f) => f.startsWith('package/prebuilds/')));
  for (const prefix of ['test/', 'bench/', 'examples/', 'docs/', '.venv/', 'native/tests/', 'native/fuzz/', 'scripts/pretrain', '.npmrc'])
    t.false(
      listing.some((f) => f.startsWith(`package/${prefix}`)),
      `${prefix} is in the tarball`,
    );

  const archive = path.join(work, 'libtorch.zip');
  const packed = JSON.parse(
    execFileSync(process.execPath, [path.join(ROOT, 'scripts', 'pack-libtorch.js'), archive], { encoding: 'utf8' }),
  );
  const mirror = await serveFile(t, '/' + PIN.archives.cpu.path, archive);
  const project = path.join(work, 'consumer');
  fs.mkdirSync(project);
  fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'consumer', private: true }));
  const home = path.join(work, 'tunekit-home');
  const env = {
    ...process.env,
    TUNEKIT_HOME: home,
    TUNEKIT_LIBTORCH_MIRROR: mirror,
    TUNEKIT_LIBTORCH_SHA256: packed.sha256,
  };
  // Not spawnSync: the mirror is served from this process's event loop.
  const start = Date.now();
  const cold = await new Promise<{ status: number | null; output: string }>((resolve) => {
    const child = spawn('npm', ['install', '--no-audit', '--no-fund', tarball], { cwd: project, env });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    child.on('close', (status) => resolve({ status, output }));
  });
  const seconds = (Date.now() - start) / 1000;
  t.is(cold.status, 0, cold.output);
  const pkg = path.join(project, 'node_modules', 'tunekit');
  t.false(fs.existsSync(path.join(pkg, 'build')), 'the addon was compiled despite the prebuild');
  t.false(fs.existsSync(path.join(pkg, '.venv')), 'a .venv was made inside node_modules');
  t.is(fs.realpathSync(path.join(pkg, 'libtorch')), fs.realpathSync(path.join(home, 'libtorch', `${PIN.version}-cpu`)));
  t.log(`npm install of the tarball: ${seconds.toFixed(0)} s, the libtorch download and unpacking included`);

  const script = `
    const { AdamW, LoRA, Model } = require('tunekit');
    (async () => {
      const model = await Model.fromConfig({ model_type: 'gpt2', vocab_size: 64, n_positions: 16, n_embd: 16, n_layer: 1, n_head: 2 }, { task: 'causal-lm', seed: 1 });
      await new LoRA({ r: 2, targetModules: ['c_attn'] }).apply(model);
      await model.train();
      const opt = new AdamW(model, { lr: 1e-2 });
      const ids = [[1, 2, 3, 4, 5, 6]];
      const before = (await model.backward({ inputIds: ids, labels: ids })).loss;
      await opt.step();
      console.log(JSON.stringify({ before, trainable: model.countParameters({ trainableOnly: true }) }));
    })();`;
  const run = spawnSync(process.execPath, ['-e', script], { cwd: project, encoding: 'utf8' });
  t.is(run.status, 0, run.stderr);
  const out = JSON.parse(run.stdout.trim());
  t.true(Number.isFinite(out.before) && out.trainable > 0);
  // The HTTP stack is an optional peer: not installed, and asked for by name.
  t.false(fs.existsSync(path.join(project, 'node_modules', 'fastify')));
  const serve = spawnSync(process.execPath, [path.join(pkg, 'dist', 'cli', 'main.js'), 'serve'], { cwd: project, encoding: 'utf8' });
  t.is(serve.status, 2);
  for (const peer of ['fastify', '@fastify/multipart', 'better-sqlite3']) t.true(serve.stderr.includes(peer), serve.stderr);
  t.regex(serve.stderr, /serve needs .*: npm install @fastify\/multipart /);
});
