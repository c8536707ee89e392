#!/usr/bin/env node
// The prebuilt libtorch a consumer's install uses, shared by every project on the machine:
//   $TUNEKIT_HOME/libtorch/<version>-<variant> (TUNEKIT_HOME defaults to ~/.cache/tunekit)
// filled once from the official archive (scripts/libtorch.json pins version, file names and SHA-256), fetched from
// $TUNEKIT_LIBTORCH_MIRROR (default https://download.pytorch.org/libtorch), variant $TUNEKIT_LIBTORCH_VARIANT
// (default cpu). A download resumes where an interrupted one stopped, is checked against its SHA-256 before anything
// is unpacked, and is unpacked into a temporary folder renamed into place; concurrent installs wait on one lock.
// Usage: node scripts/libtorch.js [fetch|path]      (fetch: make sure it is in the cache; path: print it, or fail)
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');
const zlib = require('zlib');
const { pipeline } = require('stream/promises');

const PIN = require('./libtorch.json');
const COMPLETE = '.tunekit-complete';

function settings(env = process.env) {
  const variant = env.TUNEKIT_LIBTORCH_VARIANT || 'cpu';
  const archive = PIN.archives[variant];
  if (!archive)
    throw new Error(`TUNEKIT_LIBTORCH_VARIANT=${variant}: unknown (scripts/libtorch.json has ${Object.keys(PIN.archives).join(', ')})`);
  const home = env.TUNEKIT_HOME || path.join(os.homedir(), '.cache', 'tunekit');
  const mirror = (env.TUNEKIT_LIBTORCH_MIRROR || PIN.mirror).replace(/\/+$/, '');
  return {
    variant,
    dir: path.join(home, 'libtorch', `${PIN.version}-${variant}`),
    url: `${mirror}/${archive.path}`,
    sha256: env.TUNEKIT_LIBTORCH_SHA256 || archive.sha256,
  };
}

/** The cached libtorch, when a complete one is there. */
function cached(env = process.env) {
  const s = settings(env);
  return fs.existsSync(path.join(s.dir, COMPLETE)) ? s.dir : null;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return e.code === 'EPERM';
  }
}

/** One install at a time per cache entry: a lock folder holding the owner's pid, taken over when that pid is gone. */
async function withLock(lock, fn, log) {
  for (let waited = 0; ; waited++) {
    try {
      fs.mkdirSync(lock);
      fs.writeFileSync(path.join(lock, 'pid'), String(process.pid));
      break;
    } catch (e) {
      if (e.code !== 'EEXIST') throw e;
      let owner = NaN;
      try {
        owner = Number(fs.readFileSync(path.join(lock, 'pid'), 'utf8'));
      } catch {
        // the owner has made the folder but not yet written its pid
      }
      if (Number.isInteger(owner) && !alive(owner)) {
        fs.rmSync(lock, { recursive: true, force: true });
        continue;
      }
      if (waited === 0) log(`another install is fetching libtorch (${lock}); waiting for it`);
      await sleep(200);
    }
  }
  try {
    return await fn();
  } finally {
    fs.rmSync(lock, { recursive: true, force: true });
  }
}

/** GET url into file, continuing a partial file with a Range request when the server allows it. */
async function download(url, file, log) {
  const client = url.startsWith('https:') ? require('https') : require('http');
  for (let redirects = 0; redirects < 5; redirects++) {
    const have = fs.existsSync(file) ? fs.statSync(file).size : 0;
    const res = await new Promise((resolve, reject) => {
      const req = client.get(url, { headers: have ? { Range: `bytes=${have}-` } : {} }, resolve);
      req.on('error', reject);
      req.setTimeout(60_000, () => req.destroy(new Error(`no data from ${url} for 60 s`)));
    });
    if ([301, 302, 303, 307, 308].includes(res.statusCode) && res.headers.location) {
      res.resume();
      url = new URL(res.headers.location, url).toString();
      continue;
    }
    if (res.statusCode === 416 && have) {
      res.resume();
      return; // the partial file is already whole
    }
    if (res.statusCode !== 200 && res.statusCode !== 206) {
      res.resume();
      throw new Error(`GET ${url}: HTTP ${res.statusCode}`);
    }
    const resume = res.statusCode === 206;
    if (have) log(resume ? `resuming the download at ${(have / 2 ** 20).toFixed(1)} MiB` : 'the server cannot resume; downloading again');
    await pipeline(res, fs.createWriteStream(file, { flags: resume ? 'a' : 'w' }));
    return;
  }
  throw new Error(`GET ${url}: too many redirects`);
}

async function sha256Of(file) {
  const hash = crypto.createHash('sha256');
  await pipeline(fs.createReadStream(file), hash);
  return hash.digest('hex');
}

/** Reads a zip's central directory (zip64 included) and writes every entry under dest, keeping unix modes. */
async function unzip(file, dest) {
  const fd = fs.openSync(file, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const read = (pos, len) => {
      const b = Buffer.alloc(len);
      fs.readSync(fd, b, 0, len, pos);
      return b;
    };
    const tailLen = Math.min(size, 65557);
    const tail = read(size - tailLen, tailLen);
    const eocd = tail.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
    if (eocd < 0) throw new Error(`${file} is not a zip archive`);
    let count = tail.readUInt16LE(eocd + 10);
    let cdOffset = tail.readUInt32LE(eocd + 16);
    if (cdOffset === 0xffffffff || count === 0xffff) {
      const loc = tail.lastIndexOf(Buffer.from([0x50, 0x4b, 0x06, 0x07]), eocd);
      const z64 = read(Number(tail.readBigUInt64LE(loc + 8)), 56);
      count = Number(z64.readBigUInt64LE(32));
      cdOffset = Number(z64.readBigUInt64LE(48));
    }
    let pos = cdOffset;
    const root = path.resolve(dest);
    for (let i = 0; i < count; i++) {
      const h = read(pos, 46);
      if (h.readUInt32LE(0) !== 0x02014b50) throw new Error(`${file}: corrupt central directory`);
      const method = h.readUInt16LE(10);
      let compressed = h.readUInt32LE(20);
      const nameLen = h.readUInt16LE(28);
      const extraLen = h.readUInt16LE(30);
      const commentLen = h.readUInt16LE(32);
      const mode = h.readUInt32LE(38) >>> 16;
      let local = h.readUInt32LE(42);
      const name = read(pos + 46, nameLen).toString('utf8');
      const extra = read(pos + 46 + nameLen, extraLen);
      // zip64 sizes and offsets, in the order the fields that overflowed appear.
      for (let e = 0; e + 4 <= extra.length; e += 4 + extra.readUInt16LE(e + 2)) {
        if (extra.readUInt16LE(e) !== 1) continue;
        let at = e + 4;
        if (h.readUInt32LE(24) === 0xffffffff) at += 8;
        if (compressed === 0xffffffff) ((compressed = Number(extra.readBigUInt64LE(at))), (at += 8));
        if (local === 0xffffffff) local = Number(extra.readBigUInt64LE(at));
      }
      pos += 46 + nameLen + extraLen + commentLen;
      const target = path.resolve(root, name);
      if (target !== root && !target.startsWith(root + path.sep)) throw new Error(`${file}: entry ${name} points outside the archive`);
      if (name.endsWith('/')) {
        fs.mkdirSync(target, { recursive: true });
        continue;
      }
      fs.mkdirSync(path.dirname(target), { recursive: true });
      const lh = read(local, 30);
      const start = local + 30 + lh.readUInt16LE(26) + lh.readUInt16LE(28);
      if (method !== 0 && method !== 8) throw new Error(`${file}: ${name} uses compression method ${method}`);
      if ((mode & 0o170000) === 0o120000) {
        const raw = read(start, compressed);
        fs.symlinkSync((method === 8 ? zlib.inflateRawSync(raw) : raw).toString('utf8'), target);
        continue;
      }
      const fileMode = mode & 0o777 || 0o644;
      if (compressed === 0) {
        fs.writeFileSync(target, '', { mode: fileMode });
        continue;
      }
      const body = fs.createReadStream(file, { start, end: start + compressed - 1 });
      const out = fs.createWriteStream(target, { mode: fileMode });
      await (method === 8 ? pipeline(body, zlib.createInflateRaw(), out) : pipeline(body, out));
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Makes sure the cache holds the pinned libtorch; returns its folder. */
async function fetchLibtorch(env = process.env, log = (m) => console.log(`tunekit libtorch: ${m}`)) {
  const s = settings(env);
  const ready = cached(env);
  if (ready) {
    log(`using ${ready}`);
    return ready;
  }
  if (!s.sha256)
    throw new Error(`no SHA-256 is pinned for ${s.url} (scripts/libtorch.json); set TUNEKIT_LIBTORCH_SHA256 to the archive's, or LIBTORCH`);
  fs.mkdirSync(path.dirname(s.dir), { recursive: true });
  return withLock(
    `${s.dir}.lock`,
    async () => {
      if (cached(env)) return s.dir; // the install we waited for did it
      const partial = `${s.dir}.download`;
      log(`downloading ${s.url}`);
      try {
        await download(s.url, partial, log);
      } catch (e) {
        throw new Error(`${e.message} (the part fetched so far is kept in ${partial} and resumed next time)`);
      }
      const got = await sha256Of(partial);
      if (got !== s.sha256.toLowerCase()) {
        fs.rmSync(partial, { force: true });
        throw new Error(`${s.url}: SHA-256 ${got} is not the pinned ${s.sha256}; the download was deleted and nothing was unpacked`);
      }
      const tmp = `${s.dir}.tmp-${process.pid}`;
      fs.rmSync(tmp, { recursive: true, force: true });
      log(`unpacking into ${s.dir}`);
      await unzip(partial, tmp);
      const inner = path.join(tmp, 'libtorch');
      if (!fs.existsSync(path.join(inner, 'include', 'torch')) || !fs.existsSync(path.join(inner, 'lib')))
        throw new Error(`${s.url} holds no libtorch/include/torch and libtorch/lib`);
      fs.writeFileSync(path.join(inner, COMPLETE), `${s.url}\n${got}\n`);
      fs.rmSync(s.dir, { recursive: true, force: true });
      fs.renameSync(inner, s.dir);
      fs.rmSync(tmp, { recursive: true, force: true });
      fs.rmSync(partial, { force: true });
      return s.dir;
    },
    log,
  );
}

module.exports = { settings, cached, fetchLibtorch, unzip };

if (require.main === module) {
  const what = process.argv[2] || 'fetch';
  const job = what === 'path' ? Promise.resolve(cached()) : fetchLibtorch();
  job
    .then((dir) => {
      if (!dir) throw new Error(`no libtorch in ${settings().dir}; run: node scripts/libtorch.js fetch`);
      if (what === 'path') console.log(dir);
    })
    .catch((e) => {
      console.error(`tunekit libtorch: ${e.message}`);
      process.exit(1);
    });
}
