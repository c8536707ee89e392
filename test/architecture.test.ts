// The plug-in architecture holds: a family is named only in its own files and the registries, a PEFT method only in
// its own files, the method registry and the strategies/CLI that offer it to users (docs/ARCHITECTURE.md).
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { MODEL_TYPES } from '../lib';
import { ROOT } from './helpers';

function files(dir: string, ext: RegExp): string[] {
  return fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true }).flatMap((e) => {
    const rel = path.join(dir, e.name);
    return e.isDirectory() ? files(rel, ext) : ext.test(e.name) ? [rel] : [];
  });
}

const SOURCES = [...files('lib', /\.ts$/), ...files('bench', /\.ts$/), ...files('native', /\.(cc|cpp|h)$/)];

test("no file outside a family's own files compares a family name", (t) => {
  const own = (f: string) => f === 'lib/families.ts' || f.startsWith('native/core/models/') || f === 'native/tests/test_core.cpp';
  const literal = new RegExp(`['"](${MODEL_TYPES.join('|')})['"]`);
  const offenders = SOURCES.filter((f) => !own(f) && literal.test(fs.readFileSync(path.join(ROOT, f), 'utf8')));
  t.deepEqual(offenders, []);
  t.true(MODEL_TYPES.length >= 5, 'the check knows every family');
});

test('no file outside the PEFT method files compares a method name', (t) => {
  const methods = [
    'lora',
    'prompt',
    'prefix',
    'bottleneck',
    'ia3',
    'LORA',
    'PROMPT_TUNING',
    'PREFIX_TUNING',
    'IA3',
    'TUNEKIT_HOULSBY_ADAPTER',
  ];
  // The strategies and the CLI name methods as users choose them, which is what they are for.
  const own = (f: string) =>
    f.startsWith('lib/peft/') ||
    f.startsWith('native/core/peft/') ||
    f.startsWith('lib/strategies/') ||
    f.startsWith('lib/cli/') ||
    f === 'native/tests/test_core.cpp';
  const compare = new RegExp(`(===|!==|==|!=)\\s*['"](${methods.join('|')})['"]`);
  const offenders = SOURCES.filter((f) => !own(f) && compare.test(fs.readFileSync(path.join(ROOT, f), 'utf8')));
  t.deepEqual(offenders, []);
});
