// The one atomic file writer: a reader (Docker, the CNI plugin, a shell) sees the old file or the new
// one, never half of either, and a crash leaves no truncated file behind.
import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, unlinkSync, writeSync, constants } from 'node:fs';
import { mkdir, open, rename, unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';

/** The temporary file, created with O_EXCL under an unguessable name in the same directory. */
const TEMP_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
const tempPath = (path: string): string => join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);

/**
 * Writes `content` to `path` (its directory created) through a temporary file in the same directory,
 * synced before the rename. The temporary file is created with O_EXCL under an unguessable name, so a
 * file or link planted there by someone else is never followed or overwritten.
 */
export function writeFileAtomic(path: string, content: string, mode = 0o644): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = tempPath(path);
  const fd = openSync(tmp, TEMP_FLAGS, mode);
  try {
    try {
      writeSync(fd, content);
      fsyncSync(fd);
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

/**
 * writeFileAtomic in steps on libuv's threads, for a process whose event loop must not wait for the
 * disk: flanneld serving CNI requests, where a sync under load takes tens of milliseconds and
 * concurrent requests would queue behind each one.
 */
export async function writeFileAtomicAsync(path: string, content: string, mode = 0o644): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = tempPath(path);
  const file = await open(tmp, TEMP_FLAGS, mode);
  try {
    try {
      await file.writeFile(content);
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined); // already renamed or gone
    throw err;
  }
}
