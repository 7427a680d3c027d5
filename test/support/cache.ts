import {defaultCacheDir} from '../../src/lib/core/paths.js'

/**
 * Where tests keep what is slow to make (the built reference box, keyed by recipe
 * hash), outside the checkout so a fresh clone on the same machine reuses it.
 */
export function testCacheDir(): string {
  return process.env.BOX_TEST_CACHE ?? `${defaultCacheDir()}-test`
}
