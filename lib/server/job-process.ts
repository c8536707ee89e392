/**
 * The entry of a fine-tuning job's child process: `tunekit <command>` with the job's flags, which reports its metrics
 * over the IPC channel the server forked it with.
 */
import { main } from '../cli/main';

let finished = false;
// The channel closes when the server dies (even by kill -9): a job then stops rather than train on as an orphan whose
// outcome no one records; the restarted server resumes it from its last checkpoint.
process.on('disconnect', () => {
  if (!finished) process.exit(129);
});

main(process.argv.slice(2)).then((code) => {
  finished = true;
  process.exitCode = code;
  // Messages are delivered in order: once this one is written, every metrics row before it is too.
  if (process.connected) process.send!({ type: 'done' }, () => process.disconnect());
});
