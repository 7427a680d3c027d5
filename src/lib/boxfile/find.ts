/** Finding the Boxfile as Vagrant finds a Vagrantfile: in the working directory or a parent. */
import {dirname, join, resolve} from 'node:path'

import {BoxError, ExitCode} from '../core/errors.js'
import {isFile} from '../core/fs.js'

export const BOXFILE_NAME = 'Boxfile'
/** Name or path of the Boxfile to use instead of ./Boxfile (a bare name is searched for upwards). */
export const BOXFILE_ENV = 'BOX_BOXFILE'

/**
 * The Boxfile for `cwd`: like Vagrant, the first one found in cwd or a parent.
 * BOX_BOXFILE overrides it: a bare name is searched for the same way, a path
 * (with a "/") is taken as is, relative to cwd.
 */
export async function findBoxfile(cwd: string, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const override = env[BOXFILE_ENV]
  if (override && override.includes('/')) {
    const file = resolve(cwd, override)
    if (!(await isFile(file)))
      throw new BoxError(`${BOXFILE_ENV}=${override}: no such file ${file}`, {exitCode: ExitCode.USAGE})
    return file
  }
  const name = override || BOXFILE_NAME
  const start = resolve(cwd)
  for (let dir = start; ; dir = dirname(dir)) {
    const candidate = join(dir, name)
    if (await isFile(candidate)) return candidate
    if (dirname(dir) === dir) break
  }
  throw new BoxError(`no ${name} found in ${start} or its parents; create one with: box init BOX`, {
    exitCode: ExitCode.USAGE,
  })
}
