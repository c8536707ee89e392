/** `tunekit serve`: the HTTP server of ../server, for other services to start jobs and call models over HTTP. */
import fs from 'node:fs';
import path from 'node:path';
import { Command, num, UsageError } from './args';

/** What the server needs besides tunekit: package.json's optional peer dependencies (lib/cli and dist/cli are both
 * two levels below it). */
function serverPackages(): string[] {
  const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8'));
  const meta: Record<string, { optional?: boolean }> = pkg.peerDependenciesMeta ?? {};
  return Object.keys(pkg.peerDependencies ?? {}).filter((p) => meta[p]?.optional);
}

export const SERVE_COMMANDS: Record<string, Command> = {
  serve: {
    summary: 'serve fine-tuning jobs and OpenAI-compatible completions and embeddings over HTTP',
    usage: 'tunekit serve [--port 8080] [--host 127.0.0.1] [--data-dir ./tunekit-data] [--token-file F] [options]',
    options: {
      port: { type: 'string' },
      host: { type: 'string' },
      'data-dir': { type: 'string' },
      'models-dir': { type: 'string' },
      'token-file': { type: 'string' },
      concurrency: { type: 'string' },
      'job-threads': { type: 'string' },
      'checkpoint-every': { type: 'string' },
      'max-adapters': { type: 'string' },
      'max-file-mb': { type: 'string' },
      log: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    help: {
      port: 'TCP port (default 8080; 0 picks a free one)',
      host: 'address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)',
      'data-dir': 'where the database, uploads, jobs and named adapters (adapters/NAME) live (default ./tunekit-data)',
      'models-dir': "base models: every subfolder with a config.json, by its name (default: tunekit's shipped models)",
      'token-file': 'JSON object of bearer token -> tenant; without it no request is refused',
      concurrency: 'fine-tuning jobs that run at once (default 1)',
      'job-threads': "libtorch threads of each job's process (default half the cores; the server's own follow OMP_NUM_THREADS)",
      'checkpoint-every': "steps between a job's checkpoints, which it resumes from after a restart (default 50)",
      'max-adapters': 'adapters kept loaded per base model (default 8)',
      'max-file-mb': 'largest upload in MiB (default 64)',
      log: 'log every request (JSON lines on stdout)',
    },
    async run(o) {
      let tokens: Record<string, string> | undefined;
      if (o['token-file'] !== undefined) {
        const file = String(o['token-file']);
        if (!fs.existsSync(file)) throw new UsageError(`--token-file ${file}: no such file`);
        try {
          tokens = JSON.parse(fs.readFileSync(file, 'utf8'));
        } catch (e) {
          throw new UsageError(`--token-file ${file}: not JSON (${(e as Error).message})`);
        }
        if (!tokens || typeof tokens !== 'object' || Array.isArray(tokens) || Object.values(tokens).some((t) => typeof t !== 'string'))
          throw new UsageError(`--token-file ${file}: expected an object of token -> tenant name`);
      }
      // The HTTP stack is an optional peer dependency (training alone installs no web server or SQLite), loaded here.
      const missing = serverPackages().filter((p) => {
        try {
          require.resolve(p);
          return false;
        } catch {
          return true;
        }
      });
      if (missing.length) throw new UsageError(`serve needs ${missing.join(', ')}: npm install ${missing.join(' ')}`);
      const { createServer } = await import('../server/app');
      const app = await createServer({
        dataDir: String(o['data-dir'] ?? 'tunekit-data'),
        ...(o['models-dir'] !== undefined ? { modelsDir: String(o['models-dir']) } : {}),
        ...(tokens ? { tokens } : {}),
        concurrency: num(o, 'concurrency', 1, 'int'),
        ...(o['job-threads'] !== undefined ? { jobThreads: num(o, 'job-threads', undefined, 'int') } : {}),
        checkpointEvery: num(o, 'checkpoint-every', 50, 'int'),
        maxAdapters: num(o, 'max-adapters', 8, 'int'),
        maxFileBytes: Math.round(num(o, 'max-file-mb', 64)! * 2 ** 20),
        logger: Boolean(o.log),
      });
      const address = await app.listen({ port: num(o, 'port', 8080, 'int'), host: String(o.host ?? '127.0.0.1') });
      console.log(`tunekit serve: listening on ${address}`);
      await new Promise<void>((resolve) => {
        for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => resolve());
      });
      await app.close();
    },
  },
};
