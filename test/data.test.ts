import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { BUILTINS, builtinSplits, Dataset, loadSplits, TunekitError } from '../lib';
import { tmpDir } from './helpers';

const dir = tmpDir('data');
const write = (name: string, text: string) => {
  const f = path.join(dir, name);
  fs.writeFileSync(f, text);
  return f;
};

test('JSONL: text + label, string labels numbered in first-seen order, blank lines skipped', async (t) => {
  const f = write('a.jsonl', '{"text":"good film","label":"pos"}\n\n{"text":"bad film","label":"neg"}\n{"text":"fine","label":"pos"}\n');
  const ds = await Dataset.fromJsonl(f);
  t.is(ds.length, 3);
  t.deepEqual(ds.labelNames, ['pos', 'neg']);
  t.deepEqual(
    ds.rows.map((r) => r.label),
    [0, 1, 0],
  );
  t.is(ds.kind, 'classification');
});

test('JSONL: field mapping and prompt/response pairs', async (t) => {
  const f = write('b.jsonl', '{"review":"nice","stars":1}\n{"review":"meh","stars":0}\n');
  const ds = await Dataset.fromJsonl(f, { fields: { text: 'review', label: 'stars' } });
  t.deepEqual(ds.rows, [
    { text: 'nice', label: 1 },
    { text: 'meh', label: 0 },
  ]);
  const g = write('c.jsonl', '{"prompt":"Q: 2+2?","response":" 4"}\n');
  const pr = await Dataset.fromJsonl(g);
  t.is(pr.kind, 'prompt-response');
  t.deepEqual(pr.rows[0], { prompt: 'Q: 2+2?', response: ' 4' });
});

test('a malformed line is an error naming the file and the line; nothing is dropped silently', async (t) => {
  const f = write('bad.jsonl', '{"text":"ok","label":0}\n{"text": "broken\n{"text":"ok","label":1}\n');
  const e = await t.throwsAsync(Dataset.fromJsonl(f), { instanceOf: TunekitError });
  t.is(e!.code, 'E_FORMAT');
  t.regex(e!.message, new RegExp(`${f.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:2: not valid JSON`));
  const g = write('notext.jsonl', '{"text":"ok"}\n{"body":"where is text"}\n');
  const e2 = await t.throwsAsync(Dataset.fromJsonl(g), { instanceOf: TunekitError });
  t.regex(e2!.message, /notext\.jsonl:2: no "text" field .*fields present: body/);
  const h = write('badlabel.jsonl', '{"text":"a","label":-1}\n');
  await t.throwsAsync(Dataset.fromJsonl(h), { message: /badlabel\.jsonl:1: label must be/ });
  await t.throwsAsync(Dataset.fromJsonl(path.join(dir, 'missing.jsonl')), { message: /does not exist/ });
});

test('CSV: header, quoted fields with commas, doubled quotes and newlines, CRLF; numeric labels', async (t) => {
  const f = write('a.csv', 'text,label\r\n"Hello, world",1\r\n"She said ""no""\nand left",0\r\nplain,1\r\n');
  const ds = await Dataset.fromCsv(f);
  t.deepEqual(ds.rows, [
    { text: 'Hello, world', label: 1 },
    { text: 'She said "no"\nand left', label: 0 },
    { text: 'plain', label: 1 },
  ]);
  t.deepEqual(ds.labelNames, ['0', '1']);
  // A doubled quote split across the reader's 64 KiB chunks is still one literal quote.
  const head = 'text,label\n"';
  const long = 'a'.repeat(65536 - head.length - 1);
  const big = await Dataset.fromCsv(write('split.csv', `${head}${long}""b",1\n`));
  t.is(big.rows[0].text, `${long}"b`);
  const tsv = write('a.tsv', 'label\ttext\n1\tgood\n0\tbad\n');
  t.deepEqual((await Dataset.fromFile(tsv)).rows, [
    { text: 'good', label: 1 },
    { text: 'bad', label: 0 },
  ]);
});

test('CSV: errors name file and line', async (t) => {
  const f = write('short.csv', 'text,label\nfine,1\n"a",0,extra\n');
  await t.throwsAsync(Dataset.fromCsv(f), { message: /short\.csv:3: 3 fields but the header has 2/ });
  const g = write('open.csv', 'text,label\n"never closed,1\n');
  await t.throwsAsync(Dataset.fromCsv(g), { message: /open\.csv:2: quoted field is never closed/ });
  const h = write('notext.csv', 'body,label\nx,1\n');
  await t.throwsAsync(Dataset.fromCsv(h), { message: /notext\.csv:2: no "text" field/ });
});

test('JSON array files, and their errors', async (t) => {
  const f = write(
    'a.json',
    JSON.stringify([
      { text: 'a', label: 0 },
      { text: 'b', label: 1 },
    ]),
  );
  t.is((await Dataset.fromJson(f)).length, 2);
  await t.throwsAsync(Dataset.fromJson(write('obj.json', '{"text":"a"}')), { message: /expected a JSON array/ });
  await t.throwsAsync(Dataset.fromJson(write('item.json', '[{"text":"a"},{"label":1}]')), {
    message: /item\.json: item 1: no "text" field/,
  });
  await t.throwsAsync(Dataset.fromFile(write('a.xml', '<a/>')), { message: /unknown data format/ });
});

test('streaming reads a large JSONL file row by row without holding it', async (t) => {
  const f = path.join(dir, 'big.jsonl');
  const fd = fs.openSync(f, 'w');
  const line = JSON.stringify({ text: 'x'.repeat(1000), label: 1 }) + '\n';
  const chunk = line.repeat(1000);
  for (let i = 0; i < 60; i++) fs.writeSync(fd, chunk); // ~60 MB, 60,000 rows
  fs.closeSync(fd);
  global.gc?.();
  const before = process.memoryUsage().rss;
  let n = 0;
  let peak = before;
  for await (const r of Dataset.streamJsonl(f)) {
    if (r.text!.length !== 1000) throw new Error('bad row');
    if (++n % 5000 === 0) peak = Math.max(peak, process.memoryUsage().rss);
  }
  t.is(n, 60000);
  t.true(peak - before < 40 * 2 ** 20, `RSS grew ${((peak - before) / 2 ** 20).toFixed(1)} MiB while streaming 60 MB`);
  fs.rmSync(f);
});

test('seeded splits are disjoint, complete, and the same for the same seed', (t) => {
  const ds = new Dataset(Array.from({ length: 101 }, (_, i) => ({ text: `row ${i}`, label: i % 2 })));
  const a = ds.split({ train: 0.7, validation: 0.1, test: 0.2 }, 7);
  const b = ds.split({ train: 0.7, validation: 0.1, test: 0.2 }, 7);
  const c = ds.split({ train: 0.7, validation: 0.1, test: 0.2 }, 8);
  t.deepEqual([a.train.length, a.validation.length, a.test.length], [71, 10, 20]);
  const all = [...a.train.rows, ...a.validation.rows, ...a.test.rows].map((r) => r.text);
  t.is(new Set(all).size, 101);
  t.deepEqual(a.test.rows, b.test.rows);
  t.notDeepEqual(a.test.rows, c.test.rows);
  t.throws(() => ds.split({ train: 0.5, test: 0.2 }, 1), { message: /add up to 1/ });
});

test('built-in datasets: the sentiment@5.0.2 sentences, fixed 70/10/20 splits', async (t) => {
  const imdb = builtinSplits('imdb-sentences');
  t.deepEqual([imdb.train.length, imdb.validation.length, imdb.test.length], [700, 100, 200]);
  t.deepEqual(imdb.train.labelNames, ['negative', 'positive']);
  const labels = [...imdb.train.rows, ...imdb.validation.rows, ...imdb.test.rows].map((r) => r.label);
  t.is(labels.filter((l) => l === 1).length, 500);
  const all = builtinSplits('sentiment-sentences');
  t.deepEqual([all.train.length, all.validation.length, all.test.length], [2100, 300, 600]);
  const every = [...all.train.rows, ...all.validation.rows, ...all.test.rows];
  t.true(
    every.every((r) => r.text!.length > 0 && (r.label === 0 || r.label === 1)),
    "the files' empty sentinels are left out",
  );
  t.is(every.filter((r) => r.label === 1).length, 1500);
  const allTest = new Set(all.test.rows.map((r) => r.text));
  t.true(
    imdb.test.rows.every((r) => allTest.has(r.text)),
    'imdb test sentences are in the combined test split',
  );
  const again = await loadSplits('builtin:imdb-sentences');
  t.deepEqual(again.test.rows, imdb.test.rows);
  t.true(BUILTINS['imdb-sentences'].licence.includes('CC BY 4.0'));
  await t.throwsAsync(loadSplits('builtin:nope'), { message: /unknown built-in dataset "nope"/ });
});

test('labels are checked as a whole file: stray ids, fractions, mixed kinds, partly labelled, a missing label field', async (t) => {
  const rows = (labels: unknown[]) => labels.map((l, i) => JSON.stringify({ text: `row ${i}`, label: l })).join('\n') + '\n';
  const cases: [string, RegExp][] = [
    [rows([0, 1, 100000000]), /labels\.jsonl:3: label 100000000 exceeds the 10000 classes/],
    [rows([0, 1, 4294967295]), /labels\.jsonl:3: label 4294967295 exceeds/],
    [
      rows([0, 1, 50]),
      /numeric labels must be class ids 0\.\.K-1, but they reach 50 while only 3 ids occur \(2, 3, 4, 5, 6, \.\.\. never do\)/,
    ],
    [rows([0, 0.5, 1]), /labels\.jsonl:2: label must be a class name or a class id .*got 0\.5/],
    [rows([0, -1, 1]), /labels\.jsonl:2: label must be/],
    [rows(['pos', 'neg', 0]), /labels\.jsonl:3: label 0 is a class id, but earlier rows' labels are class names/],
    [rows([true, false]), /labels\.jsonl:1: label must be a class name or a class id/],
    [rows([0, 1]) + '{"text":"unlabelled"}\n', /labels\.jsonl:3: no "label" label, but 2 of the 3 rows have one/],
  ];
  for (const [text, want] of cases) {
    const start = Date.now();
    await t.throwsAsync(Dataset.fromJsonl(write('labels.jsonl', text)), { instanceOf: TunekitError, message: want });
    t.true(Date.now() - start < 5000, 'refused without building a class table');
  }
  await t.throwsAsync(Dataset.fromJsonl(write('field.jsonl', rows([0, 1])), { fields: { label: 'sentiment' } }), {
    message: /field\.jsonl: no row has the label field "sentiment"; fields present: text, label/,
  });
  t.throws(() => new Dataset([{ text: 'a', label: 0.5 }]), { message: /row 0 has label 0\.5, not a class id/ });
  t.throws(() => new Dataset([{ text: 'a', label: 1e8 }]), { message: /not a class id in \[0, 10000\)/ });
});

test('a JSONL file that starts with a UTF-8 byte-order mark reads like one without', async (t) => {
  const f = write('bom.jsonl', '\uFEFF{"text":"first","label":"a"}\n{"text":"second","label":"b"}\n');
  const ds = await Dataset.fromJsonl(f);
  t.deepEqual(ds.rows, [
    { text: 'first', label: 0 },
    { text: 'second', label: 1 },
  ]);
});
