import {expect} from 'vitest'

import {BoxError} from '../../src/lib/core/errors.js'

/** The BoxError `promise` rejects with; fails the test when it resolves or rejects with anything else. */
export async function rejection(promise: Promise<unknown>): Promise<BoxError> {
  const error = await promise.then(
    () => undefined,
    (error_: unknown) => error_,
  )
  expect(error).toBeInstanceOf(BoxError)
  return error as BoxError
}
