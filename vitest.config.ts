import { defineConfig } from 'vitest/config';

// Tests create kernel devices and network namespaces and start real etcd servers; they share
// one machine, so files run one at a time and each test gets generous time.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default'],
  },
});
