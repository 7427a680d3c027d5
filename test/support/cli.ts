import {join} from 'node:path'
import {execa, type ResultPromise} from 'execa'
import {expect} from 'vitest'

import {PROJECT_ROOT} from '../../src/lib/core/paths.js'

/** The launcher npm puts on PATH (bin/box, which runs bin/run.js with node). */
export const BIN = join(PROJECT_ROOT, 'bin', 'box')

export interface CliEnv {
  cwd: string
  dataDir: string
  cacheDir: string
}

/** Run the built CLI (`npm test` builds dist/ first) as a user would. */
export function box(
  env: CliEnv,
  args: string[],
  options: {input?: string; timeout?: number} = {},
): ResultPromise<{reject: false}> {
  return execa(BIN, args, {
    cwd: env.cwd,
    reject: false,
    input: options.input,
    stdin: options.input === undefined ? 'ignore' : undefined,
    timeout: options.timeout ?? 600_000,
    env: {BOX_DATA_DIR: env.dataDir, BOX_CACHE_DIR: env.cacheDir, NO_COLOR: '1'},
  }) as ResultPromise<{reject: false}>
}

/** `box ssh -c COMMAND` in the project, which must exit 0 (its output is the failure's message); its stdout, trimmed. */
export async function sshStdout(env: CliEnv, command: string): Promise<string> {
  const result = await box(env, ['ssh', '-c', command])
  expect(result.exitCode, `${command}\n${result.stdout}\n${result.stderr}`).toBe(0)
  return result.stdout.trim()
}
