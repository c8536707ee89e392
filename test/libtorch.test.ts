import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import test, { ExecutionContext } from 'ava';
import { ROOT, tmpDir } from './helpers';

// scripts/libtorch.js against a local mirror: an archive shaped as the official one (libtorch/include, libtorch/lib,
// a symlinked .so), served over HTTP on the loopback address with Range support.
const SCRIPT = path.join(ROOT, 'scripts', 'libtorch.js');
const PIN = JSON.parse(fs.readFileSync(path.join(ROOT, 'scripts', 'libtorch.json'), 'utf8'));
const ARCHIVE_PATH = '/' + PIN.archives.cpu.path;

interface Mirror {
  url: string;
  requests: { range?: string }[];
  /** Cut the next response after this many bytes (an interrupted download). */
  cutNextAt?: number;
}

function makeArchive(): { file: string; sha256: string; lib: Buffer } {
  const dir = tmpDir('libtorch-src');
  const root = path.join(dir, 'libtorch');
  fs.mkdirSync(path.join(root, 'include', 'torch'), { recursive: true });
  fs.mkdirSync(path.join(root, 'lib'), { recursive: true });
  fs.writeFileSync(path.join(root, 'include', 'torch', 'torch.h'), '#pragma once\n');
  const lib = crypto.randomBytes(3 << 20); // incompressible, so the cut lands mid-body
  fs.writeFileSync(path.join(root, 'lib', 'libtorch_cpu.so'), lib, { mode: 0o755 });
  fs.symlinkSync('libtorch_cpu.so', path.join(root, 'lib', 'libtorch_cpu.so.2'));
  const file = path.join(dir, 'archive.zip');
  execFileSync('zip', ['-qry', file, 'libtorch'], { cwd: dir });
  return { file, sha256: crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex'), lib };
}

/** Serves the archive until the test ends (closed even when an assertion fails, or ava would wait on it). */
async function serve(t: ExecutionContext, file: string): Promise<Mirror> {
  const body = fs.readFileSync(file);
  const m = { requests: [] } as unknown as Mirror;
  const server = http.createServer((req, res) => {
    m.requests.push({ range: req.headers.range });
    if (req.url !== ARCHIVE_PATH) return res.writeHead(404).end();
    const from = Number(/^bytes=(\d+)-$/.exec(req.headers.range ?? '')?.[1] ?? 0);
    res.writeHead(from ? 206 : 200, { 'content-length': body.length - from, 'accept-ranges': 'bytes' });
    const cut = m.cutNextAt;
    m.cutNextAt = undefined;
    if (cut === undefined) return res.end(body.subarray(from));
    res.write(body.subarray(from, from + cut), () => res.socket?.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  m.url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return m;
}

function fetch(home: string, mirror: Mirror, sha256: string): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [SCRIPT, 'fetch'], {
      env: { ...process.env, TUNEKIT_HOME: home, TUNEKIT_LIBTORCH_MIRROR: mirror.url, TUNEKIT_LIBTORCH_SHA256: sha256 },
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('close', (code) => resolve({ code: code ?? -1, out }));
  });
}

const cacheDir = (home: string) => path.join(home, 'libtorch', `${PIN.version}-cpu`);

/** What is left beside the cache entry: nothing, once an install has finished or failed. */
const leftovers = (home: string) => fs.readdirSync(path.join(home, 'libtorch')).filter((f) => f !== `${PIN.version}-cpu`);

test('a fresh cache fills from the mirror: files, modes and symlinks as archived; a second install downloads nothing', async (t) => {
  const a = makeArchive();
  const mirror = await serve(t, a.file);
  const home = tmpDir('libtorch-home');
  const first = await fetch(home, mirror, a.sha256);
  t.is(first.code, 0, first.out);
  const dir = cacheDir(home);
  t.deepEqual(fs.readFileSync(path.join(dir, 'lib', 'libtorch_cpu.so')), a.lib);
  t.is(fs.statSync(path.join(dir, 'lib', 'libtorch_cpu.so')).mode & 0o777, 0o755);
  t.is(fs.readlinkSync(path.join(dir, 'lib', 'libtorch_cpu.so.2')), 'libtorch_cpu.so');
  t.true(fs.existsSync(path.join(dir, 'include', 'torch', 'torch.h')));
  t.deepEqual(leftovers(home), []);
  t.is(mirror.requests.length, 1);
  const again = await fetch(home, mirror, a.sha256);
  t.is(again.code, 0, again.out);
  t.regex(again.out, /using /);
  t.is(mirror.requests.length, 1);
});

test('a checksum mismatch is refused: nothing unpacked, nothing half-written left', async (t) => {
  const a = makeArchive();
  const mirror = await serve(t, a.file);
  const home = tmpDir('libtorch-bad');
  const r = await fetch(home, mirror, 'ab'.repeat(32));
  t.is(r.code, 1);
  t.regex(r.out, /SHA-256 [0-9a-f]{64} is not the pinned abab.*nothing was unpacked/);
  t.false(fs.existsSync(cacheDir(home)));
  t.deepEqual(leftovers(home), []);
});

test('an interrupted download keeps its part and the next install resumes it with a Range request', async (t) => {
  const a = makeArchive();
  const mirror = await serve(t, a.file);
  const home = tmpDir('libtorch-cut');
  mirror.cutNextAt = 1 << 20;
  const cut = await fetch(home, mirror, a.sha256);
  t.is(cut.code, 1, cut.out);
  t.false(fs.existsSync(cacheDir(home)));
  const resumed = await fetch(home, mirror, a.sha256);
  t.is(resumed.code, 0, resumed.out);
  t.regex(resumed.out, /resuming the download at \d\.\d MiB/);
  // What reached the disk before the cut (a little less than was sent) is what the Range asks to continue from.
  const kept = Number(/^bytes=(\d+)-$/.exec(mirror.requests[1].range ?? '')?.[1]);
  t.true(kept > 0 && kept <= 1 << 20, `Range ${mirror.requests[1].range}`);
  t.deepEqual(fs.readFileSync(path.join(cacheDir(home), 'lib', 'libtorch_cpu.so')), a.lib);
  t.deepEqual(leftovers(home), []);
});

test('two installs racing for one cache: one downloads, the other waits and uses it', async (t) => {
  const a = makeArchive();
  const mirror = await serve(t, a.file);
  const home = tmpDir('libtorch-race');
  const [x, y] = await Promise.all([fetch(home, mirror, a.sha256), fetch(home, mirror, a.sha256)]);
  t.is(x.code, 0, x.out);
  t.is(y.code, 0, y.out);
  t.is(mirror.requests.length, 1);
  t.deepEqual(fs.readFileSync(path.join(cacheDir(home), 'lib', 'libtorch_cpu.so')), a.lib);
  t.deepEqual(leftovers(home), []);
});
