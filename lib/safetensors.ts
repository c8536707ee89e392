/**
 * Reads and checks safetensors headers. The header is validated here in full (the core checks offsets against the
 * file again before reading a byte), so a corrupt or lying file is a TunekitError naming the file and tensor.
 */
import fs from 'node:fs';
import path from 'node:path';
import { TunekitError } from './errors';
import { show } from './validate';
import type { RawEntry } from './native';

const DTYPE_SIZES: Record<string, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
};
const MAX_HEADER = 100 * 1024 * 1024;

export interface HeaderEntry {
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}
export interface Header {
  file: string;
  tensors: Map<string, HeaderEntry>;
  metadata: Record<string, string>;
}

export function readHeader(file: string): Header {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw new TunekitError('E_FILE', `cannot open ${file}: ${(e as Error).message}`);
  }
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) throw new TunekitError('E_FILE', `${file} is not a file`);
    const size = stat.size;
    const bad = (msg: string) => new TunekitError('E_FORMAT', `${file}: ${msg}`);
    if (size < 8) throw bad(`file is ${size} bytes, too short to be safetensors`);
    const lenBuf = Buffer.alloc(8);
    fs.readSync(fd, lenBuf, 0, 8, 0);
    const n = lenBuf.readBigUInt64LE(0);
    if (n > BigInt(size - 8)) throw bad(`header length ${n} is larger than the file (${size} bytes): truncated or corrupt`);
    if (n > BigInt(MAX_HEADER)) throw bad(`header length ${n} exceeds ${MAX_HEADER} bytes`);
    const hlen = Number(n);
    const hbuf = Buffer.alloc(hlen);
    fs.readSync(fd, hbuf, 0, hlen, 8);
    let json: unknown;
    try {
      json = JSON.parse(hbuf.toString('utf8'));
    } catch (e) {
      throw bad(`header is not valid JSON (${(e as Error).message})`);
    }
    if (!json || typeof json !== 'object' || Array.isArray(json)) throw bad('header is not a JSON object');
    const dataStart = 8 + hlen;
    const dataLen = size - dataStart;
    const tensors = new Map<string, HeaderEntry>();
    let metadata: Record<string, string> = {};
    for (const [name, v] of Object.entries(json as Record<string, unknown>)) {
      if (name === '__metadata__') {
        metadata = (v ?? {}) as Record<string, string>;
        continue;
      }
      const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      if (!e || typeof e !== 'object') throw bad(`tensor '${name}' has no description`);
      if (typeof e.dtype !== 'string' || !(e.dtype in DTYPE_SIZES))
        throw bad(`tensor '${name}' has unknown dtype ${JSON.stringify(e.dtype)}`);
      const isDim = (d: unknown) => Number.isSafeInteger(d) && (d as number) >= 0;
      if (!Array.isArray(e.shape) || !e.shape.every(isDim)) throw bad(`tensor '${name}' has an invalid shape`);
      const off = e.data_offsets;
      if (!Array.isArray(off) || off.length !== 2 || !off.every(isDim) || off[1] < off[0]) {
        throw bad(`tensor '${name}' has invalid data_offsets`);
      }
      const numel = (e.shape as number[]).reduce((a, b) => a * b, 1);
      const want = numel * DTYPE_SIZES[e.dtype];
      if (off[1] - off[0] !== want) {
        throw bad(`tensor '${name}' spans ${off[1] - off[0]} bytes but ${e.dtype} ${JSON.stringify(e.shape)} needs ${want}`);
      }
      if (off[1] > dataLen)
        throw bad(`tensor '${name}' ends at byte ${off[1]}, past the end of the data (${dataLen} bytes): truncated file?`);
      tensors.set(name, { dtype: e.dtype, shape: e.shape as number[], begin: dataStart + off[0], end: dataStart + off[1] });
    }
    const spans = [...tensors.entries()].filter(([, t]) => t.end > t.begin).sort((a, b) => a[1].begin - b[1].begin);
    for (let i = 1; i < spans.length; i++) {
      if (spans[i][1].begin < spans[i - 1][1].end) throw bad(`tensors '${spans[i - 1][0]}' and '${spans[i][0]}' overlap`);
    }
    return { file, tensors, metadata };
  } finally {
    fs.closeSync(fd);
  }
}

/** The headers of a checkpoint folder: `model.safetensors`, or the shards listed in `model.safetensors.index.json`. */
export function readCheckpoint(dir: string, stem = 'model'): Header[] {
  const single = path.join(dir, `${stem}.safetensors`);
  const index = path.join(dir, `${stem}.safetensors.index.json`);
  if (fs.existsSync(single)) return [readHeader(single)];
  if (fs.existsSync(index)) {
    let map: Record<string, string>;
    try {
      map = JSON.parse(fs.readFileSync(index, 'utf8')).weight_map;
    } catch (e) {
      throw new TunekitError('E_FORMAT', `${index}: not valid JSON (${(e as Error).message})`);
    }
    if (!map || typeof map !== 'object' || Array.isArray(map)) throw new TunekitError('E_FORMAT', `${index}: no weight_map object`);
    for (const [name, f] of Object.entries(map)) {
      if (typeof f !== 'string' || f === '' || path.basename(f) !== f)
        throw new TunekitError('E_FORMAT', `${index}: weight_map['${name}'] must be a shard file name in the same folder, got ${show(f)}`);
    }
    const headers = [...new Set(Object.values(map))].map((f) => readHeader(path.join(dir, f)));
    for (const [name, f] of Object.entries(map)) {
      const h = headers.find((x) => path.basename(x.file) === f);
      if (!h?.tensors.has(name)) throw new TunekitError('E_FORMAT', `${index}: '${name}' is not in shard ${f}`);
    }
    return headers;
  }
  throw new TunekitError('E_FILE', `${dir}: no ${stem}.safetensors or ${stem}.safetensors.index.json`);
}

export function entry(name: string, t: HeaderEntry): RawEntry {
  return { name, dtype: t.dtype, shape: t.shape, begin: t.begin, end: t.end };
}

/** Writes `file` atomically: `write(tmp)` fills a temporary file beside it, then a rename puts it in place. */
export async function atomicWrite(file: string, write: (tmp: string) => Promise<void> | void): Promise<void> {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${Date.now()}.tmp`);
  try {
    await write(tmp);
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

export function writeJsonAtomic(file: string, value: unknown): Promise<void> {
  return atomicWrite(file, (tmp) => {
    const fd = fs.openSync(tmp, 'w');
    try {
      fs.writeSync(fd, JSON.stringify(value, null, 2) + '\n');
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  });
}
