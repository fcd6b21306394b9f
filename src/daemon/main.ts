// flanneld entry point.
import { Daemon } from './daemon.js';
import { FlagError, parseDaemonFlags } from './flags.js';
import { createLogger } from '../common/log.js';
import { startMallocTrimming } from './memory-trim.js';

let opts;
try {
  opts = parseDaemonFlags(process.argv.slice(2));
} catch (err) {
  if (!(err instanceof FlagError)) throw err;
  process.stderr.write(`flanneld: ${err.message}\n(flanneld --help lists the flags)\n`);
  process.exit(1);
}
const log = createLogger(opts.logLevel, 'flanneld', opts.logFormat);
for (const warning of opts.warnings) log.warn(warning);
const daemon = new Daemon(opts, log);
/** Ends the daemon's own timers (malloc trimming) on a clean stop. */
const running = new AbortController();

let exiting = false;
const shutdown = (signal: string) => {
  if (exiting) return;
  exiting = true;
  running.abort();
  log.info({ signal }, 'stopping; the subnet lease is kept for the next start');
  daemon.stop().then(
    () => process.exit(0),
    (err: unknown) => {
      log.error({ err: (err as Error).message }, 'error while stopping');
      process.exit(1);
    },
  );
};
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

daemon.run().then(
  () => startMallocTrimming(running.signal),
  (err: unknown) => {
    log.fatal({ err: (err as Error).message }, 'cannot start');
    process.exit(1);
  },
);
