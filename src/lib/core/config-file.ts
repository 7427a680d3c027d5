import {readFile} from 'node:fs/promises'
import {isMap, isPair, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node as YamlNode} from 'yaml'
import type {z} from 'zod'

import {BoxError, ExitCode} from './errors.js'

/** A YAML file parsed with positions, so every later complaint can name file:line:col. */
export interface LoadedYaml<T> {
  file: string
  value: T
  /** file:line:col of the value at `path` (or of its nearest existing parent). */
  where(path: ReadonlyArray<string | number>): string
}

type Path = ReadonlyArray<PropertyKey>

/**
 * Parse `file` as YAML and validate it with `schema`. Syntax and schema errors
 * become one BoxError listing every problem as `file:line:col: field: what is wrong`.
 */
export async function loadYamlFile<S extends z.ZodType>(
  file: string,
  schema: S,
  what = 'file',
): Promise<LoadedYaml<z.infer<S>>> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    throw new BoxError(
      code === 'ENOENT' ? `${what} not found: ${file}` : `cannot read ${what} ${file}: ${(error as Error).message}`,
      {
        exitCode: ExitCode.USAGE,
        cause: error,
      },
    )
  }
  return parseYaml(file, text, schema, what)
}

export function parseYaml<S extends z.ZodType>(
  file: string,
  text: string,
  schema: S,
  what = 'file',
): LoadedYaml<z.infer<S>> {
  const lineCounter = new LineCounter()
  const doc = parseDocument(text, {lineCounter, prettyErrors: false, uniqueKeys: true})
  const at = (offset: number) => {
    const {line, col} = lineCounter.linePos(offset)
    return `${file}:${line}:${col}`
  }
  if (doc.errors.length > 0) {
    const problems = doc.errors.map((e) => `${at(e.pos[0])}: ${e.message.split('\n')[0]}`)
    throw invalid(what, file, problems)
  }
  const where = (path: Path) => at(offsetOf(doc, path))
  const result = schema.safeParse(doc.toJS() ?? {})
  if (!result.success) {
    const problems = result.error.issues.map((issue) => {
      const keys = (issue as {keys?: string[]}).keys
      if (issue.code === 'unrecognized_keys' && keys?.length) {
        return `${at(offsetOf(doc, [...issue.path, keys[0]!], true))}: unknown field "${[...issue.path, keys[0]].join('.')}"${acceptedFields(schema, issue.path)}`
      }
      const field = issue.path.length > 0 ? issue.path.join('.') : '(top level)'
      return `${where(issue.path)}: ${field}: ${issue.message}`
    })
    throw invalid(what, file, problems)
  }
  return {file, value: result.data, where}
}

/** A semantic check failed after parsing: same format as schema errors. */
export function configError(
  loaded: LoadedYaml<unknown>,
  path: ReadonlyArray<string | number>,
  message: string,
  what = 'file',
): BoxError {
  const field = path.length > 0 ? path.join('.') : '(top level)'
  return invalid(what, loaded.file, [`${loaded.where(path)}: ${field}: ${message}`])
}

function invalid(what: string, file: string, problems: string[]): BoxError {
  const position = (problem: string) =>
    problem
      .slice(file.length + 1)
      .split(':', 2)
      .map(Number) as [number, number]
  // Report in file order, whatever order the schema found them in.
  const sorted = [...new Set(problems)].sort((a, b) => {
    const [la, ca] = position(a)
    const [lb, cb] = position(b)
    return la - lb || ca - cb
  })
  return new BoxError(`invalid ${what} ${file}:\n${sorted.map((p) => `  ${p}`).join('\n')}`, {
    exitCode: ExitCode.USAGE,
    suggestions: [`fix the ${what} at the position shown`],
  })
}

/** Offset of the node at `path`; for a missing path, of the deepest existing parent. `keyOf` points at the key, not the value. */
function offsetOf(doc: Document, path: Path, keyOf = false): number {
  let node: unknown = doc.contents
  let offset = rangeStart(node) ?? 0
  for (const segment of path) {
    if (isMap(node)) {
      const pair = node.items.find((item) => isPair(item) && isScalar(item.key) && item.key.value === segment)
      if (!pair) return offset
      const keyStart = rangeStart(pair.key)
      if (keyOf && segment === path.at(-1)) return keyStart ?? offset
      node = pair.value
      offset = rangeStart(node) ?? keyStart ?? offset
    } else if (isSeq(node) && typeof segment === 'number') {
      node = node.items[segment]
      if (node === undefined) return offset
      offset = rangeStart(node) ?? offset
    } else {
      return offset
    }
  }
  return offset
}

function rangeStart(node: unknown): number | undefined {
  return (node as YamlNode | undefined)?.range?.[0]
}

function acceptedFields(schema: z.ZodType, path: Path): string {
  let current: unknown = schema
  for (const segment of path) {
    const def = (
      current as {def?: {type?: string; shape?: Record<string, unknown>; element?: unknown; innerType?: unknown}}
    )?.def
    if (!def) return ''
    current = typeof segment === 'number' ? def.element : def.shape?.[segment as string]
    while ((current as {def?: {innerType?: unknown}})?.def?.innerType)
      current = (current as {def: {innerType: unknown}}).def.innerType
  }
  const shape = (current as {def?: {shape?: Record<string, unknown>}})?.def?.shape
  return shape ? ` (accepted: ${Object.keys(shape).join(', ')})` : ''
}
