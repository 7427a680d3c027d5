import {describe, expect, it} from 'vitest'

import {Asker} from '../../src/cli/prompts.js'
import {BoxError, BugError, ExternalError} from '../../src/lib/core/errors.js'
import {run} from '../../src/lib/core/exec.js'

const prompt = {flagName: '--colour', what: 'colour', example: '--colour red', ask: async () => 'asked'}

describe('flaggable prompts', () => {
  it('takes the flag, checked, before anything else', async () => {
    const asker = new Asker(true)
    expect(await asker.answer({...prompt, flag: 'red', default: 'blue'})).toBe('red')
    await expect(
      asker.answer({
        ...prompt,
        flag: 'pink',
        validate: (value) => (value === 'red' ? undefined : `"${value}" is not red`),
      }),
    ).rejects.toMatchObject({
      message: '--colour: "pink" is not red',
      exitCode: 2,
    })
  })

  it('asks when it may, takes the default when it may not, and names the flag when there is neither', async () => {
    expect(await new Asker(true).answer({...prompt, flag: undefined, default: 'blue'})).toBe('asked')
    expect(await new Asker(false).answer({...prompt, flag: undefined, default: 'blue'})).toBe('blue')
    const missing = new Asker(false).answer({...prompt, flag: undefined})
    await expect(missing).rejects.toBeInstanceOf(BoxError)
    await expect(missing).rejects.toMatchObject({
      exitCode: 2,
      message: expect.stringContaining('no colour given'),
      suggestions: ['pass --colour, e.g. --colour red'],
    })
  })
})

describe('errors of the exec door', () => {
  it('a failed program is an ExternalError naming the command and its arguments', async () => {
    const failure = await run('sh', ['-c', 'echo oops >&2; exit 3'], {purpose: 'failing on purpose'}).catch(
      (error: unknown) => error,
    )
    expect(failure).toBeInstanceOf(ExternalError)
    expect(failure).toBeInstanceOf(BoxError)
    expect(failure).toMatchObject({command: 'sh', args: ['-c', 'echo oops >&2; exit 3'], detail: 'oops', exitCode: 1})
    expect((failure as Error).message).toMatch(
      /^failing on purpose failed: `sh -c echo oops >&2; exit 3` exited with code 3$/,
    )
  })

  it('a BugError says it is a bug in box', () => {
    const bug = new BugError('no machine')
    expect(bug).toBeInstanceOf(BoxError)
    expect(bug.message).toBe('internal error: no machine')
    expect(bug.suggestions[0]).toMatch(/bug in box/)
  })
})
