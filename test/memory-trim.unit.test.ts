// The malloc trimmer the daemon runs once ready and every 10 s (src/daemon/memory-trim.ts): the
// addon is built with the others, so the daemon does not silently go without it. What trimming saves
// is measured by bench:memory (docs/memory.md), not asserted here.
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { trimMalloc } from '../src/daemon/memory-trim.js';
import { repoPath } from '../testbed/cluster.js';

describe('malloc trimming', () => {
  it('the addon is built with the others and trims on request', () => {
    expect(existsSync(repoPath('build/Release/flannel_memory.node'))).toBe(true);
    expect(typeof trimMalloc()).toBe('boolean');
  });
});
