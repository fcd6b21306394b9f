// How a backend logs one batch of lease events: each peer added or changed on its own line while the
// batch is small, and a large batch's additions (a start among thousands of peers, a burst) at debug,
// with one summary line at info, so that the log stays readable whatever the cluster's size.
import type { Logger } from '../common/log.js';

/** Above this many events in one batch, each peer added is logged at debug and the batch once at info. */
const LOG_EACH_UP_TO = 20;

export class PeerChangeLog {
  private readonly quiet: string[] = [];

  constructor(
    private readonly log: Logger,
    private readonly batchSize: number,
  ) {}

  /** A peer's entries were set: `known` when it had entries before (a change), else it is new. */
  changed(subnet: string, fields: object, known: boolean): void {
    if (this.batchSize <= LOG_EACH_UP_TO || known) {
      this.log.info(fields, known ? 'updating subnet' : 'adding subnet');
      return;
    }
    this.log.debug(fields, 'adding subnet');
    this.quiet.push(subnet);
  }

  /** The batch is in: the summary of the additions logged at debug, if any. */
  done(): void {
    const { quiet } = this;
    if (quiet.length > 0) this.log.info({ count: quiet.length, first: quiet[0], last: quiet[quiet.length - 1] }, 'adding subnets');
  }
}
