/**
 * The one rule for box names, wherever a name comes from (box add, a catalog, a Boxfile,
 * box init): "worker", "org/name", as Vagrant spells them. A name becomes a directory in
 * the store (store/layout.ts), so it must not climb out of it or look like its scratch space.
 */

const NAME_PATTERN = /^[A-Za-z0-9._/-]+$/
/** Vagrant's escape for the "/" of "org/name" in the store's directory names. */
export const SLASH_ESCAPE = '-VAGRANTSLASH-'

/** What is wrong with `name` as a box name, or undefined when it is a valid one. */
export function boxNameProblem(name: string): string | undefined {
  if (!name) return 'it is empty'
  if (!NAME_PATTERN.test(name)) return 'only letters, digits and . _ - / are allowed'
  if (name.split('/').some((part) => part === '' || part === '.' || part === '..'))
    return 'it must not start or end with "/" or contain "//", "." or ".." segments'
  if (name.startsWith('.') || name.startsWith('-')) return 'it must not start with "." or "-"'
  if (name.includes(SLASH_ESCAPE)) return `it must not contain ${SLASH_ESCAPE}`
  return undefined
}
