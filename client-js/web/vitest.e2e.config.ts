import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['e2e/**/*.test.ts'],
    testTimeout: 180_000,
    hookTimeout: 240_000,
    // One browser at a time: two cores, and each test drives several pages.
    fileParallelism: false,
  },
});
