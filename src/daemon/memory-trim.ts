// Hands memory that malloc holds but no longer uses back to the kernel (src/native/memory.cc says
// why it piles up): once when the daemon is ready, its busiest moment just behind it, then every
// TRIM_INTERVAL_MS, which catches what bursts of lease changes and garbage collections free later.
// A trim of a daemon's small heaps takes well under a millisecond.
import { loadBuiltAddon } from '../common/addon.js';
import { every } from '../common/scheduler.js';

const TRIM_INTERVAL_MS = 10_000;

interface MemoryAddon {
  trim(): boolean;
}

let addon: MemoryAddon | null | undefined;

/** The addon, or null where it is not built (then nothing is trimmed). */
function memoryAddon(): MemoryAddon | null {
  if (addon === undefined) addon = loadBuiltAddon<MemoryAddon>('flannel_memory');
  return addon;
}

/** Trims now; false when nothing was released (or the addon is missing). */
export function trimMalloc(): boolean {
  return memoryAddon()?.trim() ?? false;
}

/** Trims now and then every `intervalMs` until `signal` is aborted. */
export function startMallocTrimming(signal: AbortSignal, intervalMs = TRIM_INTERVAL_MS): void {
  if (!memoryAddon()) return;
  trimMalloc();
  every(intervalMs, trimMalloc, { signal });
}
