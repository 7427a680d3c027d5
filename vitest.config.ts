import {defineConfig} from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Guests boot under software emulation: files that share one booted machine
    // run one at a time so two guests never fight for the 2 cores.
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 900_000,
    reporters: ['default'],
  },
})
