/**
 * Box versions and version constraints as Vagrant writes them (RubyGems rules):
 * a version is dot-separated segments ("1.2.3", "20240101.0.1", "1.0.0.beta1");
 * a constraint is a comma-separated list of `[op] version` with op one of
 * = != > < >= <= ~> (no op means =), e.g. ">= 1.2, < 2" or "~> 1.4".
 */
import {BoxError, ExitCode} from './errors.js'

export type VersionSegment = number | string
export type ConstraintOperator = '=' | '!=' | '>' | '<' | '>=' | '<=' | '~>'

export interface VersionRequirement {
  operator: ConstraintOperator
  version: string
}

/** Thrown for text that is not a version or a constraint; the message says what is wrong. */
export class VersionSyntaxError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'VersionSyntaxError'
  }
}

const VERSION_PATTERN = /^\d+(?:\.[0-9A-Za-z]+)*(?:-[0-9A-Za-z]+(?:\.[0-9A-Za-z]+)*)?$/
const REQUIREMENT_PATTERN = /^(~>|>=|<=|!=|=|>|<)?\s*(\S+)$/

export function isVersion(text: string): boolean {
  return VERSION_PATTERN.test(text)
}

/** Segments of a version: numbers stay numbers; a "-pre" suffix becomes its own segments. */
export function parseVersion(text: string): VersionSegment[] {
  const trimmed = text.trim()
  if (!isVersion(trimmed))
    throw new VersionSyntaxError(`"${text}" is not a version (expected numbers separated by dots, such as 1.2.3)`)
  return trimmed.split(/[.-]/).map((segment) => (/^\d+$/.test(segment) ? Number(segment) : segment))
}

/**
 * Compare like RubyGems: missing segments count as 0, and a text segment
 * (a pre-release such as "beta1") sorts before any number.
 */
export function compareVersions(a: string, b: string): number {
  const left = parseVersion(a)
  const right = parseVersion(b)
  for (let i = 0; i < Math.max(left.length, right.length); i++) {
    const x = left[i] ?? 0
    const y = right[i] ?? 0
    if (x === y) continue
    if (typeof x === 'number' && typeof y === 'number') return x < y ? -1 : 1
    if (typeof x === 'string' && typeof y === 'string') return x < y ? -1 : 1
    return typeof x === 'string' ? -1 : 1
  }
  return 0
}

/** Parse ">= 1.2, < 2" into requirements; throws VersionSyntaxError naming the bad part. */
export function parseConstraint(text: string): VersionRequirement[] {
  const parts = text.split(',').map((part) => part.trim())
  if (parts.every((part) => part === ''))
    throw new VersionSyntaxError('empty version constraint (expected e.g. ">= 1.2, < 2")')
  return parts.map((part) => {
    if (part === '') throw new VersionSyntaxError(`empty requirement in "${text}" (a stray comma?)`)
    const match = REQUIREMENT_PATTERN.exec(part)
    if (!match)
      throw new VersionSyntaxError(
        `"${part}" is not a requirement (expected an operator = != > < >= <= ~> and a version, e.g. ">= 1.2")`,
      )
    const [, operator = '=', version = ''] = match
    if (!isVersion(version)) {
      throw new VersionSyntaxError(
        `"${part}": "${version}" is not a version (operators: = != > < >= <= ~>; versions: numbers separated by dots, such as 1.2.3)`,
      )
    }
    return {operator: operator as ConstraintOperator, version}
  })
}

/** What is wrong with a constraint a user wrote (VersionSyntaxError's message), or undefined when it parses. */
export function constraintProblem(text: string): string | undefined {
  try {
    parseConstraint(text)
    return undefined
  } catch (error) {
    if (error instanceof VersionSyntaxError) return error.message
    throw error
  }
}

/** A constraint a user wrote (a flag, a Boxfile's box_version), parsed; a usage error saying what is wrong otherwise. */
export function parseUserConstraint(text: string): VersionRequirement[] {
  const problem = constraintProblem(text)
  if (problem !== undefined) throw new BoxError(`invalid version constraint: ${problem}`, {exitCode: ExitCode.USAGE})
  return parseConstraint(text)
}

/** Newest first, for sort(); text that is not a version (a hand-made store directory) goes after every version, by text. */
export function compareNewestFirst(a: string, b: string): number {
  const aValid = isVersion(a)
  const bValid = isVersion(b)
  if (aValid && bValid) return compareVersions(b, a)
  if (aValid !== bValid) return aValid ? -1 : 1
  return a < b ? 1 : a > b ? -1 : 0
}

/** Does `version` meet every requirement of `constraint` (a string or parsed requirements)? */
export function satisfies(version: string, constraint: string | VersionRequirement[]): boolean {
  const requirements = typeof constraint === 'string' ? parseConstraint(constraint) : constraint
  return requirements.every(({operator, version: wanted}) => {
    const order = compareVersions(version, wanted)
    switch (operator) {
      case '=':
        return order === 0
      case '!=':
        return order !== 0
      case '>':
        return order > 0
      case '<':
        return order < 0
      case '>=':
        return order >= 0
      case '<=':
        return order <= 0
      case '~>':
        return order >= 0 && compareVersions(version, pessimisticUpperBound(wanted)) < 0
    }
  })
}

/** "~> 1.2" allows < 2, "~> 1.2.3" allows < 1.3 (drop the last segment, bump the one before). */
function pessimisticUpperBound(version: string): string {
  const numeric = parseVersion(version).filter((segment): segment is number => typeof segment === 'number')
  const kept = numeric.length > 1 ? numeric.slice(0, -1) : numeric
  kept[kept.length - 1] = kept.at(-1)! + 1
  return kept.join('.')
}
