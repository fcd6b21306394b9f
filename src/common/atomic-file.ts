// The one atomic file writer: a reader (Docker, the CNI plugin, a shell) sees the old file or the new
// one, never half of either, and a crash leaves no truncated file behind.
import { closeSync, fsync, fsyncSync, mkdirSync, openSync, renameSync, unlinkSync, writeSync, constants } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';

/**
 * The temporary file beside `path`, holding `content`: created with O_EXCL under an unguessable name,
 * so a file or link planted there by someone else is never followed or overwritten.
 */
function writeTemporary(path: string, content: string, mode: number): { fd: number; tmp: string } {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
  try {
    writeSync(fd, content);
  } catch (err) {
    closeSync(fd);
    unlinkSync(tmp);
    throw err;
  }
  return { fd, tmp };
}

/** Closes the synced temporary file and renames it over `path`; removes it if anything failed. */
function replaceWith(path: string, fd: number, tmp: string, synced: unknown): void {
  try {
    closeSync(fd);
    if (synced !== null && synced !== undefined) throw synced;
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

/**
 * Writes `content` to `path` (its directory created) through a temporary file in the same directory,
 * synced before the rename.
 */
export function writeFileAtomic(path: string, content: string, mode = 0o644): void {
  const { fd, tmp } = writeTemporary(path, content, mode);
  let synced: unknown = null;
  try {
    fsyncSync(fd);
  } catch (err) {
    synced = err;
  }
  replaceWith(path, fd, tmp, synced);
}

/**
 * writeFileAtomic with the sync on one of libuv's threads, for a process whose event loop must not
 * wait for the disk: flanneld serving CNI requests, where a sync under load takes tens of
 * milliseconds and concurrent requests would queue behind each one. The other steps are quick system
 * calls, made at once.
 */
export async function writeFileAtomicAsync(path: string, content: string, mode = 0o644): Promise<void> {
  const { fd, tmp } = writeTemporary(path, content, mode);
  const synced = await new Promise<unknown>((resolve) => fsync(fd, (err) => resolve(err)));
  replaceWith(path, fd, tmp, synced);
}
