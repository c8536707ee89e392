/**
 * safetensors on the TS side: headers (parsed and checked by the core's one reader, so a corrupt or lying file is a
 * TunekitError naming the file and tensor), sharded checkpoints, entries for the loaders, and atomic writes.
 */
import fs from 'node:fs';
import path from 'node:path';
import { TunekitError } from './errors';
import { show } from './validate';
import { addon, RawEntry, sync } from './native';

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

/** The header of a safetensors file, read and checked in full by the core's reader (native/core/safetensors_header.cpp). */
export function readHeader(file: string): Header {
  if (typeof file !== 'string') throw new TunekitError('E_TYPE', `safetensors path must be a string, got ${show(file)}`);
  const raw = sync(() => addon.readSafetensorsHeader(file));
  const tensors = new Map<string, HeaderEntry>(
    raw.tensors.map((t) => [t.name, { dtype: t.dtype, shape: t.shape, begin: t.begin, end: t.end }]),
  );
  return { file, tensors, metadata: raw.metadata };
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

/** A JSON file's value: E_FILE when it is missing, E_FORMAT when it does not parse; both name the file, and `hint`. */
export function readJsonFile<T = any>(file: string, hint?: string): T {
  const why = hint ? ` (${hint})` : '';
  if (!fs.existsSync(file)) throw new TunekitError('E_FILE', `${file} does not exist${why}`);
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new TunekitError('E_FORMAT', `${file}: ${(e as Error).message}${why}`);
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
