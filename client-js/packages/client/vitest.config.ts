import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 180_000,
    // Each file starts its own servers; two cores are enough for two at a time.
    fileParallelism: true,
    maxWorkers: 2,
    minWorkers: 1,
  },
});
