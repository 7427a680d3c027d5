/**
 * scripts/ci-summary.mjs, the step of .ci/run that fails CI on a skipped test: run on JSON
 * reports that vitest itself writes (a real nested `vitest run` on a folder of small test
 * files), so the report's format is vitest's, not a hand-made copy of it.
 */
import {mkdir, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {makeTempDir} from '../fixtures/boxes.js'

const VITEST = join(PROJECT_ROOT, 'node_modules', '.bin', 'vitest')
const SUMMARY = join(PROJECT_ROOT, 'scripts', 'ci-summary.mjs')

/** Skipped three ways: by name, by the test itself at run time (as the root-only tests do), and a todo. */
const SKIPPING = `describe('suite', () => {
  it('passes', () => {})
  it.skip('skipped by name', () => {})
  it('skips itself', (context) => context.skip())
  it.todo('left to do')
})
it('passes at the top', () => {})
`
const PASSING = `describe('suite', () => {
  it('passes', () => {})
  it('passes too', () => {})
})
`

describe('scripts/ci-summary.mjs on the JSON report vitest writes', () => {
  let dir: string
  let cleanup: () => Promise<void>

  /** vitest run (globals: the folder has no node_modules to import vitest from) on one test file; the report's path. */
  async function report(name: string, source: string): Promise<string> {
    const root = join(dir, name)
    await mkdir(root)
    await writeFile(join(root, `${name}.test.js`), source)
    const output = join(dir, `${name}.json`)
    const run = await execa(VITEST, ['run', '--globals', '--root', root, '--reporter=json', `--outputFile=${output}`], {
      reject: false,
      stdin: 'ignore',
    })
    expect(run.exitCode, run.stderr).toBe(0)
    return output
  }

  async function allow(name: string, allowed: Record<string, string>): Promise<string> {
    const file = join(dir, `${name}-allowed.json`)
    await writeFile(file, JSON.stringify({why: 'test', allowed}))
    return file
  }

  const summary = (reportFile: string, allowedFile: string) =>
    execa('node', [SUMMARY, reportFile, allowedFile], {reject: false, stdin: 'ignore'})

  let skipping: string
  let passing: string

  beforeAll(async () => {
    ;({dir, cleanup} = await makeTempDir('box-ci-summary-'))
    skipping = await report('skipping', SKIPPING)
    passing = await report('passing', PASSING)
  })

  afterAll(async () => {
    await cleanup?.()
  })

  it('a skipped test not in the allowed list: exit 1, each one named, counted as failed', async () => {
    const result = await summary(skipping, await allow('none', {}))
    expect(result.exitCode).toBe(1)
    expect(result.stdout).toBe('2 passed, 3 failed, 3 skipped')
    expect(result.stderr.split('\n').sort()).toEqual([
      'skipped in CI, which must run it: suite left to do',
      'skipped in CI, which must run it: suite skipped by name',
      'skipped in CI, which must run it: suite skips itself',
    ])
  })

  it('only some allowed: still exit 1, naming just the others', async () => {
    const result = await summary(skipping, await allow('some', {'suite skipped by name': 'why it may skip'}))
    expect(result.exitCode).toBe(1)
    expect(result.stdout).toBe('2 passed, 2 failed, 3 skipped')
    expect(result.stderr).not.toContain('skipped by name')
    expect(result.stderr).toContain('suite skips itself')
    expect(result.stderr).toContain('suite left to do')
  })

  it('every skipped test allowed (by its full name, describe and test): exit 0', async () => {
    const allowed = await allow('all', {
      'suite skipped by name': 'a',
      'suite skips itself': 'b',
      'suite left to do': 'c',
    })
    const result = await summary(skipping, allowed)
    expect(result.exitCode, result.stderr).toBe(0)
    expect(result.stdout).toBe('2 passed, 0 failed, 3 skipped')
    expect(result.stderr).toBe('')
  })

  it("all passed: exit 0 with the repository's own allowed list", async () => {
    const result = await summary(passing, join(PROJECT_ROOT, 'test', 'allowed-skips.json'))
    expect(result.exitCode, result.stderr).toBe(0)
    expect(result.stdout).toBe('2 passed, 0 failed, 0 skipped')
  })
})
