/**
 * File system helpers every layer uses: what a path is, a write that readers never see
 * half done, JSON read through a schema into a BoxError, and a free-space check before
 * long work. zod is only a type here: callers pass their schema, so loading this module
 * does not load zod (box ssh's fast path imports it).
 */
import {randomBytes} from 'node:crypto'
import {readFile, rename, rm, stat, statfs, writeFile} from 'node:fs/promises'
import {basename, dirname, join} from 'node:path'

import type {z} from 'zod'

import {BoxError} from './errors.js'
import {formatBytes} from './progress.js'

export type PathKind = 'file' | 'directory' | 'other'

/** What is at `path` (following symlinks); undefined when nothing is, or it cannot be seen. */
export async function pathKind(path: string): Promise<PathKind | undefined> {
  return stat(path).then(
    (info) => (info.isFile() ? 'file' : info.isDirectory() ? 'directory' : 'other'),
    () => undefined,
  )
}

export async function exists(path: string): Promise<boolean> {
  return (await pathKind(path)) !== undefined
}

export async function isFile(path: string): Promise<boolean> {
  return (await pathKind(path)) === 'file'
}

export async function isDirectory(path: string): Promise<boolean> {
  return (await pathKind(path)) === 'directory'
}

/**
 * Replace `file` with `data` atomically: written to a hidden temporary file beside it,
 * then renamed over it, so a reader sees the old content or the new, never half. The
 * temporary file is removed when anything fails.
 */
export async function writeFileAtomic(
  file: string,
  data: string | Uint8Array,
  options: {mode?: number} = {},
): Promise<void> {
  const temporary = join(dirname(file), `.${basename(file)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`)
  try {
    await writeFile(temporary, data, {mode: options.mode})
    await rename(temporary, file)
  } catch (error) {
    await rm(temporary, {force: true})
    throw error
  }
}

/** How a document that fails its schema is reported. */
export interface SchemaErrorOptions {
  exitCode?: number
  suggestions?: string[]
  /** The message for a value the schema rejects (default: "WHAT is invalid"); the problems go in the detail. */
  invalid?: string
  /** The message for text that is not JSON (default: "WHAT is not valid JSON: REASON"). */
  notJson?: (reason: string) => string
}

/** Validate `value` with `schema`; a BoxError naming `what` and listing each problem as "path: message". */
export function checkWithSchema<S extends z.ZodType>(
  value: unknown,
  schema: S,
  what: string,
  options: SchemaErrorOptions = {},
): z.infer<S> {
  const parsed = schema.safeParse(value)
  if (parsed.success) return parsed.data
  throw new BoxError(options.invalid ?? `${what} is invalid`, {
    exitCode: options.exitCode,
    detail: parsed.error.issues
      .map((issue) => `${formatIssuePath(issue.path) || '(top level)'}: ${issue.message}`)
      .join('\n'),
    suggestions: options.suggestions,
  })
}

/** Parse JSON text and validate it with `schema`; errors as checkWithSchema's. */
export function parseJsonWithSchema<S extends z.ZodType>(
  text: string,
  schema: S,
  what: string,
  options: SchemaErrorOptions = {},
): z.infer<S> {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (error) {
    const reason = (error as Error).message
    throw new BoxError(options.notJson?.(reason) ?? `${what} is not valid JSON: ${reason}`, {
      exitCode: options.exitCode,
      suggestions: options.suggestions,
    })
  }
  return checkWithSchema(json, schema, what, options)
}

export interface ReadJsonOptions<T> extends SchemaErrorOptions {
  /** What a missing file means: a value to use instead, or an error thrown from here (default: "WHAT not found"). */
  ifMissing?: () => T
}

/** Read a JSON file and validate it with `schema`; every failure is a BoxError naming `what`. */
export async function readJsonWithSchema<S extends z.ZodType>(
  file: string,
  schema: S,
  what: string,
  options: ReadJsonOptions<z.infer<S>> = {},
): Promise<z.infer<S>> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
      if (options.ifMissing) return options.ifMissing()
      throw new BoxError(`${what} not found: ${file}`, {
        exitCode: options.exitCode,
        cause: error,
        suggestions: options.suggestions,
      })
    }
    throw new BoxError(`cannot read ${what}: ${(error as Error).message}`, {exitCode: options.exitCode, cause: error})
  }
  return parseJsonWithSchema(text, schema, what, options)
}

/** "versions[0].providers[1].url" */
function formatIssuePath(path: ReadonlyArray<PropertyKey>): string {
  return path
    .map((key, index) => (typeof key === 'number' ? `[${key}]` : `${index === 0 ? '' : '.'}${String(key)}`))
    .join('')
}

/** Bytes an unprivileged writer may still use on the file system holding `path`, and that file system's device. */
export async function freeSpace(path: string): Promise<{bytes: number; device: number}> {
  const [fs, info] = await Promise.all([statfs(path), stat(path)])
  return {bytes: fs.bavail * fs.bsize, device: info.dev}
}

/**
 * Refuse long work up front when `dir`'s file system has less than `needed` bytes free:
 * a half-full disk fails late and messily. `needs` names the work ("the build").
 */
export async function checkFreeSpace(
  dir: string,
  needed: number,
  options: {needs: string; suggestions: string[]},
): Promise<void> {
  const {bytes} = await freeSpace(dir)
  if (bytes < needed) {
    throw new BoxError(
      `not enough free space in ${dir}: ${options.needs} needs about ${formatBytes(needed)}, ${formatBytes(bytes)} is free`,
      {
        suggestions: options.suggestions,
      },
    )
  }
}
