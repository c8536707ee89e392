/** tokenizer.json (Hugging Face tokenizers format) through @huggingface/tokenizers, with batching and padding. */
import fs from 'node:fs';
import path from 'node:path';
import { Tokenizer as HFTokenizer } from '@huggingface/tokenizers';
import { padRows } from './batch';
import { readJsonFile } from './safetensors';
import { TunekitError } from './errors';
import { checkOptions, show } from './validate';

export interface EncodeBatchOptions {
  addSpecialTokens?: boolean;
  /** 'longest' pads to the longest row; a number pads (and truncates) every row to that length. */
  padding?: false | 'longest' | number;
  truncation?: boolean;
  maxLength?: number;
  paddingSide?: 'left' | 'right';
}

export class Tokenizer {
  private readonly tok: HFTokenizer;
  readonly padTokenId: number | undefined;
  readonly eosTokenId: number | undefined;
  readonly vocabSize: number;

  private constructor(
    tok: HFTokenizer,
    config: Record<string, unknown>,
    private readonly file: string,
  ) {
    this.tok = tok;
    const idOf = (v: unknown) => {
      const s = typeof v === 'string' ? v : (v as { content?: string } | undefined)?.content;
      return s === undefined ? undefined : tok.token_to_id(s);
    };
    this.padTokenId = idOf(config.pad_token);
    this.eosTokenId = idOf(config.eos_token);
    this.vocabSize = tok.get_vocab(true).size;
  }

  static async fromPretrained(dir: string): Promise<Tokenizer> {
    const file = path.join(dir, 'tokenizer.json');
    if (!fs.existsSync(file)) throw new TunekitError('E_FILE', `${file} does not exist`);
    const json = readJsonFile(file);
    checkVocabularyIds(json, file);
    const cfgFile = path.join(dir, 'tokenizer_config.json');
    const config = fs.existsSync(cfgFile) ? readJsonFile(cfgFile) : {};
    let tok: Tokenizer;
    try {
      tok = new Tokenizer(new HFTokenizer(json, config), config, file);
    } catch (e) {
      throw new TunekitError('E_FORMAT', `${file}: not a tokenizer this library can read (${(e as Error).message})`);
    }
    // The tokenizers library checks little when it loads: a broken pipeline shows on first use, so use it once here.
    tok.decode(tok.encode('Hello, world! 123 caf\u00e9'));
    return tok;
  }

  /** A fault inside the tokenizers library comes from the file (the inputs are checked): E_FORMAT naming it. */
  private library<T>(f: () => T): T {
    try {
      return f();
    } catch (e) {
      if (e instanceof TunekitError) throw e;
      throw new TunekitError('E_FORMAT', `${this.file}: the tokenizer it describes fails (${(e as Error)?.message ?? String(e)})`);
    }
  }

  /** The id of one token of the vocabulary (special or not), or undefined when it is not in it. */
  tokenId(token: string): number | undefined {
    if (typeof token !== 'string') throw new TunekitError('E_TYPE', `token must be a string, got ${show(token)}`);
    const id = this.library(() => this.tok.token_to_id(token));
    return id === null || id === undefined ? undefined : id;
  }

  /**
   * Token ids of one text. With maxLength, the text is truncated but the special tokens the template adds
   * ([CLS] ... [SEP]) are kept, as transformers' truncation does.
   */
  encode(text: string, options: { addSpecialTokens?: boolean; maxLength?: number } = {}): number[] {
    checkOptions(options, ['addSpecialTokens', 'maxLength'], 'encode');
    if (typeof text !== 'string') throw new TunekitError('E_TYPE', 'text must be a string');
    const add = options.addSpecialTokens ?? true;
    const ids = this.library(() => this.tok.encode(text, { add_special_tokens: add }).ids);
    const max = options.maxLength;
    if (max === undefined || ids.length <= max) return ids;
    if (!Number.isInteger(max) || max < 1) throw new TunekitError('E_ARG', `maxLength must be a positive integer, got ${max}`);
    if (!add) return ids.slice(0, max);
    const plain = this.library(() => this.tok.encode(text, { add_special_tokens: false }).ids);
    const k = ids.length - plain.length;
    let p = 0;
    while (p <= k && !plain.every((v, i) => ids[p + i] === v)) p++;
    if (p > k || max <= k) return ids.slice(0, max);
    return [...ids.slice(0, p), ...plain.slice(0, max - k), ...ids.slice(p + plain.length)];
  }

  decode(ids: number[], options: { skipSpecialTokens?: boolean } = {}): string {
    checkOptions(options, ['skipSpecialTokens'], 'decode');
    if (!Array.isArray(ids)) throw new TunekitError('E_TYPE', `ids must be an array of token ids, got ${show(ids)}`);
    for (let i = 0; i < ids.length; i++) {
      const v: unknown = ids[i];
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 0)
        throw new TunekitError('E_TYPE', `ids[${i}] must be a token id (an integer >= 0), got ${i in ids ? show(v) : 'a hole'}`);
    }
    return this.library(() => this.tok.decode(ids, { skip_special_tokens: options.skipSpecialTokens ?? false }));
  }

  /** Encodes several texts into one padded batch with its attention mask. */
  encodeBatch(texts: string[], options: EncodeBatchOptions = {}): { inputIds: number[][]; attentionMask: number[][] } {
    if (!Array.isArray(texts)) throw new TunekitError('E_TYPE', 'texts must be an array of strings');
    const fixed = typeof options.padding === 'number' ? options.padding : undefined;
    const max = fixed ?? options.maxLength;
    const cut = (options.truncation ?? true) ? max : undefined;
    const rows = texts.map((t) => this.encode(t, { addSpecialTokens: options.addSpecialTokens, maxLength: cut }));
    if (options.padding === false) return { inputIds: rows, attentionMask: rows.map((r) => r.map(() => 1)) };
    if (this.padTokenId === undefined && rows.some((r) => r.length !== (fixed ?? rows[0].length))) {
      throw new TunekitError('E_CONFIG', 'tokenizer has no pad_token; cannot pad a batch of different lengths');
    }
    const padded = padRows(rows, this.padTokenId ?? 0, options.paddingSide ?? 'right', fixed);
    return { inputIds: padded.inputIds, attentionMask: padded.attentionMask };
  }
}

/**
 * Token ids must lie inside the vocabulary: the tokenizers library sizes tables by the largest id, so one id of 4e9
 * would take minutes and gigabytes to load. The bound is the count of vocabulary entries and added tokens.
 */
function checkVocabularyIds(json: unknown, file: string): void {
  if (!json || typeof json !== 'object' || Array.isArray(json)) throw new TunekitError('E_FORMAT', `${file}: not a JSON object`);
  const j = json as { model?: { vocab?: unknown }; added_tokens?: unknown };
  const vocab = j.model?.vocab;
  const added = Array.isArray(j.added_tokens) ? j.added_tokens : [];
  const entries = Array.isArray(vocab) ? vocab.length : vocab && typeof vocab === 'object' ? Object.keys(vocab).length : 0;
  const bound = entries + added.length;
  const check = (id: unknown, what: string) => {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= bound)
      throw new TunekitError('E_FORMAT', `${file}: ${what} has id ${show(id)}, outside the vocabulary's ${bound} entries`);
  };
  // A Unigram vocabulary is a list whose index is the id; BPE and WordPiece map token to id.
  if (vocab && typeof vocab === 'object' && !Array.isArray(vocab))
    for (const [token, id] of Object.entries(vocab)) check(id, `token ${JSON.stringify(token).slice(0, 40)}`);
  for (const t of added) check((t as { id?: unknown })?.id, `added token ${show((t as { content?: unknown })?.content)}`);
}
