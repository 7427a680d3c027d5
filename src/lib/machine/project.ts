/**
 * The project a machine command works in: its Boxfile, found as Vagrant finds a
 * Vagrantfile (boxfile/find.ts), and the machines it resolves to. box ssh and box status
 * must start fast, so this module loads neither yaml nor zod: the resolved Boxfile is
 * cached as JSON in .box/, and boxfile/load.ts (the parser, with its file:line:col errors)
 * is loaded only when the cache does not hold this very Boxfile.
 */
import {mkdir, readFile, rename, stat, writeFile} from 'node:fs/promises'
import {homedir} from 'node:os'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'

import {findBoxfile} from '../boxfile/find.js'
import type {Boxfile, ResolvedMachine} from '../boxfile/types.js'
import {BoxError, ExitCode} from '../core/errors.js'
import {pathKind} from '../core/fs.js'
import type {MachineContext} from './context.js'
import {createProgress} from '../core/progress.js'

/** A Boxfile as the machine commands use it: resolved, without source positions. */
export type ProjectBoxfile = Pick<Boxfile, 'file' | 'dir' | 'machines'>

/** The machines `names` ask for, in that order; all of them for no names. */
export function selectMachines(
  boxfile: Pick<Boxfile, 'file' | 'machines'>,
  names: readonly string[],
): ResolvedMachine[] {
  if (names.length === 0) return boxfile.machines
  const byName = new Map(boxfile.machines.map((machine) => [machine.name, machine]))
  const unknown = names.filter((name) => !byName.has(name))
  if (unknown.length > 0) {
    const known = boxfile.machines.map((machine) => machine.name).join(', ')
    const what =
      unknown.length === 1
        ? `unknown machine "${unknown[0]}"`
        : `unknown machines ${unknown.map((name) => `"${name}"`).join(', ')}`
    throw new BoxError(`${what} in ${boxfile.file}; its machines: ${known}`, {exitCode: ExitCode.USAGE})
  }
  return [...new Set(names)].map((name) => byName.get(name)!)
}

export interface OpenProjectOptions
  extends Pick<MachineContext, 'dataDir' | 'cacheDir'>, Partial<Pick<MachineContext, 'progress' | 'signal'>> {
  /** box's version: part of the Boxfile cache key. */
  version: string
  /** Machine names asked for (all of the Boxfile's for none). */
  names: readonly string[]
  cwd?: string
}

/** The machines a machine command acts on and the context they run in. */
export async function openProject(
  options: OpenProjectOptions,
): Promise<{machines: ResolvedMachine[]; context: MachineContext}> {
  const boxfile = await loadProjectBoxfile({version: options.version, cwd: options.cwd})
  const context: MachineContext = {
    projectDir: boxfile.dir,
    dataDir: options.dataDir,
    cacheDir: options.cacheDir,
    progress: options.progress ?? createProgress({silent: true}),
    signal: options.signal,
  }
  return {machines: selectMachines(boxfile, options.names), context}
}

const PARSER_MODULE = fileURLToPath(new URL('../boxfile/load.js', import.meta.url))

/** Where the resolved Boxfile is cached, next to the machines' state. */
export function boxfileCachePath(projectDir: string): string {
  return join(projectDir, '.box', 'boxfile.json')
}

/**
 * Find and load the Boxfile, from the cache while it is valid: same file, mtime and
 * size, same box version and parser (which resolve it) and home directory (which `~` means).
 */
export async function loadProjectBoxfile(options: {version: string; cwd?: string}): Promise<ProjectBoxfile> {
  const file = await findBoxfile(options.cwd ?? process.cwd())
  const cacheFile = boxfileCachePath(dirname(file))
  const [info, parser] = await Promise.all([stat(file), stat(PARSER_MODULE).catch(() => undefined)])
  // Taken before the file is read: if it changes meanwhile, the next run sees a new key.
  // The parser module's mtime: a rebuilt box (same version, other fields) resolves anew.
  const key = JSON.stringify({
    file,
    mtimeMs: info.mtimeMs,
    size: info.size,
    version: options.version,
    parser: parser?.mtimeMs,
    home: homedir(),
  })
  const cached = await readCache(cacheFile, key)
  if (cached) return cached

  const {loadBoxfile} = await import('../boxfile/load.js')
  const {dir, machines} = await loadBoxfile({file})
  const boxfile = {file, dir, machines}
  await writeCache(cacheFile, key, boxfile)
  return boxfile
}

async function readCache(cacheFile: string, key: string): Promise<ProjectBoxfile | undefined> {
  let entry: {key: string; boxfile: ProjectBoxfile}
  try {
    entry = JSON.parse(await readFile(cacheFile, 'utf8'))
  } catch {
    return undefined
  }
  if (entry.key !== key || !(await hostPathsStillValid(entry.boxfile.machines))) return undefined
  return entry.boxfile
}

async function writeCache(cacheFile: string, key: string, boxfile: ProjectBoxfile): Promise<void> {
  const temporary = `${cacheFile}.${process.pid}.tmp`
  try {
    await mkdir(dirname(cacheFile), {recursive: true})
    await writeFile(temporary, JSON.stringify({key, boxfile}))
    await rename(temporary, cacheFile)
  } catch {
    // Only a cache: a project directory box cannot write to is loaded the slow way every time.
  }
}

/**
 * The Boxfile's checks of the host (checkListItems in boxfile/load.ts), made again: a file
 * that went away since must fail as it would without the cache.
 */
async function hostPathsStillValid(machines: ResolvedMachine[]): Promise<boolean> {
  const checks = machines.flatMap((machine) => [
    ...machine.syncedFolders
      .filter((folder) => !folder.disabled)
      .map(async (folder) => (await pathKind(folder.source)) === 'directory'),
    ...machine.provisioners.map(async (provisioner) => {
      if (provisioner.type === 'file') return (await pathKind(provisioner.source)) !== undefined
      if (provisioner.type === 'ansible') return (await pathKind(provisioner.playbook)) === 'file'
      return provisioner.path === undefined || (await pathKind(provisioner.path)) === 'file'
    }),
  ])
  return (await Promise.all(checks)).every(Boolean)
}
