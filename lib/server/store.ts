/**
 * What `tunekit serve` must not lose: uploaded files, fine-tuning jobs and their events, in one SQLite database
 * (better-sqlite3, write-ahead log) in the data dir. Every change is one statement or one transaction, so a kill -9
 * leaves the database as it was before or after it.
 */
import crypto from 'node:crypto';
import Database from 'better-sqlite3';

export type JobStatus = 'validating_files' | 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';
export const FINISHED: readonly JobStatus[] = ['succeeded', 'failed', 'cancelled'];

export interface FileRecord {
  id: string;
  tenant: string;
  filename: string;
  purpose: string;
  bytes: number;
  rows: number;
  created_at: number;
}

/** A job's method, as OpenAI's API nests it: the type and its hyperparameters. */
export interface JobMethod {
  type: string;
  hyperparameters: Record<string, unknown>;
}

export interface JobRecord {
  id: string;
  tenant: string;
  model: string;
  training_file: string;
  validation_file: string | null;
  method: JobMethod;
  suffix: string | null;
  seed: number;
  status: JobStatus;
  created_at: number;
  started_at: number | null;
  finished_at: number | null;
  fine_tuned_model: string | null;
  error: { code: string; message: string } | null;
  /** Times the job was started: above 1, it resumed after a server restart. */
  attempts: number;
  /** A cancel was asked while the job ran: its process's exit then means cancelled, not failed. */
  cancel_requested: boolean;
}

export interface EventRecord {
  seq: number;
  job_id: string;
  created_at: number;
  level: 'info' | 'warn' | 'error';
  type: 'message' | 'metrics';
  message: string;
  data: Record<string, unknown> | null;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS files (
  id TEXT PRIMARY KEY, tenant TEXT NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL,
  bytes INTEGER NOT NULL, rows INTEGER NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, tenant TEXT NOT NULL, model TEXT NOT NULL,
  training_file TEXT NOT NULL, validation_file TEXT, method TEXT NOT NULL, suffix TEXT, seed INTEGER NOT NULL,
  status TEXT NOT NULL, created_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER,
  fine_tuned_model TEXT UNIQUE, error TEXT, attempts INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, created_at INTEGER NOT NULL, level TEXT NOT NULL,
  type TEXT NOT NULL, message TEXT NOT NULL, data TEXT);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq);
`;

/** OpenAI-style ids: a prefix and 24 random base-62-ish characters. */
export function newId(prefix: string): string {
  return `${prefix}-${crypto.randomBytes(18).toString('base64url').replace(/[-_]/g, '').slice(0, 24).padEnd(24, '0')}`;
}

const now = () => Math.floor(Date.now() / 1000);

type Row = Record<string, unknown>;

function jobOf(r: Row): JobRecord {
  const { seq: _seq, method, error, cancel_requested, ...rest } = r;
  return {
    ...(rest as Omit<JobRecord, 'method' | 'error' | 'cancel_requested'>),
    method: JSON.parse(method as string),
    error: error ? JSON.parse(error as string) : null,
    cancel_requested: Boolean(cancel_requested),
  };
}

function eventOf(r: Row): EventRecord {
  return { ...(r as unknown as EventRecord), data: r.data ? JSON.parse(r.data as string) : null };
}

export class Store {
  private readonly db: Database.Database;

  constructor(file: string) {
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    // Commits reach the disk before the server answers: a job it acknowledged survives a power cut too.
    this.db.pragma('synchronous = FULL');
    this.db.pragma('busy_timeout = 5000');
    this.db.exec(SCHEMA);
  }

  close(): void {
    this.db.close();
  }

  addFile(f: Omit<FileRecord, 'created_at'>): FileRecord {
    const rec = { ...f, created_at: now() };
    this.db
      .prepare(
        'INSERT INTO files (id, tenant, filename, purpose, bytes, rows, created_at) VALUES (@id, @tenant, @filename, @purpose, @bytes, @rows, @created_at)',
      )
      .run(rec);
    return rec;
  }

  file(id: string): FileRecord | undefined {
    return this.db.prepare('SELECT * FROM files WHERE id = ?').get(id) as FileRecord | undefined;
  }

  files(tenant: string | null): FileRecord[] {
    return (
      tenant === null
        ? this.db.prepare('SELECT * FROM files ORDER BY created_at DESC').all()
        : this.db.prepare('SELECT * FROM files WHERE tenant = ? ORDER BY created_at DESC').all(tenant)
    ) as FileRecord[];
  }

  addJob(j: Pick<JobRecord, 'id' | 'tenant' | 'model' | 'training_file' | 'validation_file' | 'method' | 'suffix' | 'seed'>): JobRecord {
    this.db
      .prepare(
        `INSERT INTO jobs (id, tenant, model, training_file, validation_file, method, suffix, seed, status, created_at)
         VALUES (@id, @tenant, @model, @training_file, @validation_file, @method, @suffix, @seed, 'validating_files', @created_at)`,
      )
      .run({ ...j, method: JSON.stringify(j.method), created_at: now() });
    return this.job(j.id)!;
  }

  job(id: string): JobRecord | undefined {
    const r = this.db.prepare('SELECT * FROM jobs WHERE id = ?').get(id) as Row | undefined;
    return r && jobOf(r);
  }

  jobByModel(fineTunedModel: string): JobRecord | undefined {
    const r = this.db.prepare('SELECT * FROM jobs WHERE fine_tuned_model = ?').get(fineTunedModel) as Row | undefined;
    return r && jobOf(r);
  }

  /** Newest first, `limit` after the job `after` (OpenAI's cursor paging); one more is read to say whether more exist. */
  jobs(tenant: string | null, limit: number, after?: string): { data: JobRecord[]; has_more: boolean } {
    const where = [tenant === null ? '1' : 'tenant = @tenant', after ? 'seq < (SELECT seq FROM jobs WHERE id = @after)' : '1'].join(
      ' AND ',
    );
    const rows = this.db
      .prepare(`SELECT * FROM jobs WHERE ${where} ORDER BY seq DESC LIMIT @n`)
      .all({ tenant, after, n: limit + 1 }) as Row[];
    return { data: rows.slice(0, limit).map(jobOf), has_more: rows.length > limit };
  }

  jobsWithStatus(status: JobStatus): JobRecord[] {
    return (this.db.prepare('SELECT * FROM jobs WHERE status = ? ORDER BY seq').all(status) as Row[]).map(jobOf);
  }

  /** Sets fields of a job and records why, in one transaction. */
  updateJob(id: string, fields: Partial<Omit<JobRecord, 'id'>>, event?: Omit<EventRecord, 'seq' | 'job_id' | 'created_at'>): JobRecord {
    const cols = Object.keys(fields);
    const values: Row = { id };
    for (const k of cols) {
      const v = (fields as Row)[k];
      values[k] = k === 'error' || k === 'method' ? (v === null ? null : JSON.stringify(v)) : typeof v === 'boolean' ? Number(v) : v;
    }
    this.db.transaction(() => {
      if (cols.length > 0) this.db.prepare(`UPDATE jobs SET ${cols.map((c) => `${c} = @${c}`).join(', ')} WHERE id = @id`).run(values);
      if (event) this.insertEvent(id, event);
    })();
    return this.job(id)!;
  }

  addEvent(jobId: string, e: Omit<EventRecord, 'seq' | 'job_id' | 'created_at'>): EventRecord {
    const seq = this.insertEvent(jobId, e);
    return this.events(jobId, { afterSeq: seq - 1, limit: 1, order: 'asc' })[0]!;
  }

  private insertEvent(jobId: string, e: Omit<EventRecord, 'seq' | 'job_id' | 'created_at'>): number {
    const r = this.db
      .prepare('INSERT INTO events (job_id, created_at, level, type, message, data) VALUES (?, ?, ?, ?, ?, ?)')
      .run(jobId, now(), e.level, e.type, e.message, e.data === null ? null : JSON.stringify(e.data));
    return Number(r.lastInsertRowid);
  }

  /** A job's events after `afterSeq`: oldest first for streams, newest first for OpenAI's list. */
  events(jobId: string, o: { afterSeq?: number; beforeSeq?: number; limit: number; order: 'asc' | 'desc' }): EventRecord[] {
    const rows = this.db
      .prepare(
        `SELECT * FROM events WHERE job_id = @jobId AND seq > @after AND seq < @before ORDER BY seq ${o.order === 'asc' ? 'ASC' : 'DESC'} LIMIT @limit`,
      )
      .all({ jobId, after: o.afterSeq ?? 0, before: o.beforeSeq ?? Number.MAX_SAFE_INTEGER, limit: o.limit }) as Row[];
    return rows.map(eventOf);
  }

  /** The last training step a job reported, so that a resumed run's repeated steps are not reported twice. */
  lastStep(jobId: string): number {
    const r = this.db
      .prepare("SELECT MAX(json_extract(data, '$.step')) AS step FROM events WHERE job_id = ? AND type = 'metrics'")
      .get(jobId) as { step: number | null };
    return r.step ?? 0;
  }
}
