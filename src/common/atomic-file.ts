// The one atomic file writer: a reader (Docker, the CNI plugin, a shell) sees the old file or the new
// one, never half of either, and (synced, as by default) a crash leaves no truncated file behind.
import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, unlinkSync, writeSync, constants } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';

export interface AtomicWriteOptions {
  /**
   * Sync the data before the rename (default), so that a crash leaves the old file or the whole new
   * one. Without it a crash soon after the write may leave an empty file where the new one was to be:
   * for state whose writer's neighbours do not sync theirs either, where the sync is only latency.
   */
  sync?: boolean;
}

/**
 * Writes `content` to `path` (its directory created) through a temporary file in the same directory,
 * renamed over `path` once written. The temporary file is created with O_EXCL under an unguessable
 * name, so a file or link planted there by someone else is never followed or overwritten.
 */
export function writeFileAtomic(path: string, content: string, mode = 0o644, opts: AtomicWriteOptions = {}): void {
  const dir = dirname(path);
  mkdirSync(dir, { recursive: true });
  const tmp = join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
  try {
    try {
      writeSync(fd, content);
      if (opts.sync ?? true) fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      /* already renamed or gone */
    }
    throw err;
  }
}
