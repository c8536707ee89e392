/** A streaming RFC 4180 CSV reader: quoted fields, doubled quotes, newlines inside quotes, CRLF. */
import fs from 'node:fs';
import { TunekitError } from '../errors';

export interface CsvRecord {
  line: number;
  fields: string[];
}

/** Yields each record with the line it starts on, reading the file in chunks so its size does not matter. */
export async function* readCsvRecords(file: string, delimiter = ','): AsyncGenerator<CsvRecord> {
  if (delimiter.length !== 1 || delimiter === '"' || delimiter === '\n')
    throw new TunekitError('E_ARG', `CSV delimiter must be one character other than a quote or newline, got ${JSON.stringify(delimiter)}`);
  const stream = fs.createReadStream(file, { encoding: 'utf8', highWaterMark: 1 << 16 });
  let fields: string[] = [];
  let field = '';
  let inQuotes = false;
  let afterQuote = false;
  let line = 1;
  let startLine = 1;
  let pendingCR = false;
  let any = false;
  const endField = () => {
    fields.push(field);
    field = '';
    afterQuote = false;
  };
  let quoteInQuotes = false;
  for await (const chunk of stream as AsyncIterable<string>) {
    for (let i = 0; i < chunk.length; i++) {
      const c = chunk[i];
      if (pendingCR) {
        pendingCR = false;
        if (c === '\n') continue;
      }
      // A quote inside a quoted field either doubles (a literal quote) or closes the field; the next char decides,
      // and it may sit in the next chunk.
      if (quoteInQuotes) {
        quoteInQuotes = false;
        if (c === '"') {
          field += '"';
          continue;
        }
        inQuotes = false;
        afterQuote = true;
      }
      if (inQuotes) {
        if (c === '"') {
          quoteInQuotes = true;
          continue;
        }
        if (c === '\n') line++;
        field += c;
        continue;
      }
      if (c === '"') {
        if (field.length === 0 && !afterQuote) {
          inQuotes = true;
          any = true;
          continue;
        }
        throw new TunekitError('E_FORMAT', `${file}:${line}: stray quote inside an unquoted field`);
      }
      if (c === delimiter) {
        endField();
        any = true;
        continue;
      }
      if (c === '\n' || c === '\r') {
        if (c === '\r') pendingCR = true;
        endField();
        const rec = fields;
        fields = [];
        const l = startLine;
        line++;
        startLine = line;
        if (!(rec.length === 1 && rec[0] === '' && !any)) yield { line: l, fields: rec };
        any = false;
        continue;
      }
      if (afterQuote) throw new TunekitError('E_FORMAT', `${file}:${line}: text after a closing quote`);
      field += c;
      any = true;
    }
  }
  if (quoteInQuotes) {
    inQuotes = false;
    afterQuote = true;
  }
  if (inQuotes) throw new TunekitError('E_FORMAT', `${file}:${startLine}: quoted field is never closed`);
  if (any || field.length > 0 || fields.length > 0) {
    endField();
    yield { line: startLine, fields };
  }
}
