/** `box init`: a commented Boxfile from static/foruser/Boxfile. */
import {readFile, writeFile} from 'node:fs/promises'
import {join, resolve} from 'node:path'

import ejs from 'ejs'

import {boxNameProblem} from '../box/name.js'
import {BoxError, ExitCode} from '../core/errors.js'
import {PROJECT_ROOT} from '../core/paths.js'
import {BOXFILE_NAME} from './find.js'
import {parseBoxfile} from './load.js'
import {DEFAULT_INIT_BOX, MACHINE_DEFAULTS} from './types.js'

const BOXFILE_TEMPLATE = join(PROJECT_ROOT, 'static', 'foruser', 'Boxfile')

export interface NewBoxfileOptions {
  box?: string
  boxUrl?: string
  /** Only the box lines, no commented reference. */
  minimal?: boolean
}

/** The text `box init` writes; checked against the schema so init never writes a Boxfile validate rejects. */
export async function renderBoxfile(options: NewBoxfileOptions, file = resolve(BOXFILE_NAME)): Promise<string> {
  const box = options.box ?? DEFAULT_INIT_BOX
  if (boxNameProblem(box) !== undefined) {
    throw new BoxError(
      `invalid box name "${box}": use a name such as debian-bookworm or org/name (letters, digits, ".", "_", "-")`,
      {exitCode: ExitCode.USAGE},
    )
  }
  const template = await readFile(BOXFILE_TEMPLATE, 'utf8')
  const rendered = ejs.render(template, {
    box,
    // JSON strings are valid YAML double-quoted scalars: safe for any URL or path.
    boxUrl: options.boxUrl === undefined ? undefined : JSON.stringify(options.boxUrl),
    minimal: options.minimal ?? false,
    defaults: MACHINE_DEFAULTS,
  })
  await parseBoxfile(file, rendered)
  return rendered
}

/** Write a new Boxfile; an existing one is kept unless `force`. Returns its path. */
export async function writeNewBoxfile(file: string, options: NewBoxfileOptions & {force?: boolean}): Promise<string> {
  const target = resolve(file)
  const text = await renderBoxfile(options, target)
  try {
    // 'wx' fails if the file exists, so two inits cannot both think they created it.
    await writeFile(target, text, {flag: options.force ? 'w' : 'wx'})
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new BoxError(`${target} already exists; not overwriting it`, {
        exitCode: ExitCode.USAGE,
        suggestions: ['box init --force to replace it'],
      })
    }
    throw error
  }
  return target
}
