/**
 * Token-counted chunking. Chunks are cut at whitespace (so that a chunk's text is an exact slice of the document and
 * its character offsets are exact), and sized in tokens of the embedding model's tokenizer, as LlamaIndex's
 * TokenTextSplitter sizes them: each chunk holds at most `chunkTokens` tokens, and consecutive chunks share about
 * `overlapTokens` tokens of words.
 */
import { TunekitError } from '../errors';
import type { Tokenizer } from '../tokenizer';

export interface Chunk {
  text: string;
  /** Character offsets of the chunk in the document: text === document.slice(start, end). */
  start: number;
  end: number;
  /** Tokens the chunk's words count (without the model's special tokens). */
  tokens: number;
}

export interface ChunkOptions {
  chunkTokens: number;
  overlapTokens: number;
}

/** Counts tokens per word with a cache: word counts repeat heavily across a corpus. */
export class WordCounter {
  private readonly cache = new Map<string, number>();
  constructor(private readonly tokenizer: Tokenizer) {}
  /** A word inside a text: byte-level BPE encodes it with its leading space, WordPiece ignores the space. */
  count(word: string): number {
    let n = this.cache.get(word);
    if (n === undefined) {
      n = this.tokenizer.encode(` ${word}`, { addSpecialTokens: false }).length;
      if (this.cache.size < 1_000_000) this.cache.set(word, n);
    }
    return n;
  }
}

interface Word {
  start: number;
  end: number;
  tokens: number;
}

/** The document's words with their offsets; a word longer than a chunk is cut into pieces that fit. */
function words(text: string, counter: WordCounter, chunkTokens: number): Word[] {
  const out: Word[] = [];
  for (const m of text.matchAll(/\S+/g)) {
    const start = m.index!;
    const tokens = counter.count(m[0]);
    if (tokens <= chunkTokens) {
      out.push({ start, end: start + m[0].length, tokens });
      continue;
    }
    // No whitespace to cut at: pieces of proportional character length, each re-counted and halved until it fits.
    let at = 0;
    while (at < m[0].length) {
      let len = Math.max(1, Math.floor((m[0].length * chunkTokens) / tokens));
      let n = counter.count(m[0].slice(at, at + len));
      while (n > chunkTokens && len > 1) {
        len = Math.ceil(len / 2);
        n = counter.count(m[0].slice(at, at + len));
      }
      out.push({ start: start + at, end: start + Math.min(at + len, m[0].length), tokens: n });
      at += len;
    }
  }
  return out;
}

export function chunkText(text: string, counter: WordCounter, options: ChunkOptions): Chunk[] {
  const { chunkTokens, overlapTokens } = options;
  if (!Number.isInteger(chunkTokens) || chunkTokens < 1)
    throw new TunekitError('E_ARG', `chunkTokens must be a positive integer, got ${chunkTokens}`);
  if (!Number.isInteger(overlapTokens) || overlapTokens < 0 || overlapTokens >= chunkTokens)
    throw new TunekitError('E_ARG', `overlapTokens must be an integer in [0, chunkTokens), got ${overlapTokens}`);
  const ws = words(text, counter, chunkTokens);
  const chunks: Chunk[] = [];
  let first = 0;
  while (first < ws.length) {
    let last = first;
    let tokens = ws[first].tokens;
    while (last + 1 < ws.length && tokens + ws[last + 1].tokens <= chunkTokens) tokens += ws[++last].tokens;
    const start = ws[first].start;
    const end = ws[last].end;
    chunks.push({ text: text.slice(start, end), start, end, tokens });
    if (last + 1 >= ws.length) break;
    // The next chunk starts early enough to repeat about overlapTokens tokens, and always moves forward.
    let next = last + 1;
    let shared = 0;
    while (next - 1 > first && shared + ws[next - 1].tokens <= overlapTokens) shared += ws[--next].tokens;
    first = next;
  }
  return chunks;
}
