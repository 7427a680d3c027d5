/**
 * The names shell completion offers where a command takes them: machine names from the
 * Boxfile, box names (and their versions and providers) from the store. The scripts of oclif's
 * autocomplete plugin (3.x) are static (commands and flags only); the lines box adds to
 * them (completion-scripts.ts) call `box __complete WORD…` for a command's arguments, which
 * the fast path answers without loading oclif (a Tab should not wait for it).
 *
 * Exit status 0: the candidates for that position, one per line (maybe none: a folder
 * without a Boxfile has no machine names). 1: box has no names for that position (a path,
 * a guest command after `--`, an unknown command): the shell completes file names there.
 */
import {readFile} from 'node:fs/promises'
import {join} from 'node:path'

import {loadBoxfileIfFound} from '../lib/boxfile/load.js'
import {PROJECT_ROOT} from '../lib/core/paths.js'
import {listBoxes} from '../lib/store/query.js'

type Slot = 'machine' | 'machine-or-path' | 'box' | 'box-version' | 'box-provider' | 'none'

interface Positionals {
  /** What each positional argument is, in order. */
  slots: Slot[]
  /** The last slot takes any number of words (`box up web db`). */
  repeat?: boolean
}

const MACHINES: Positionals = {slots: ['machine'], repeat: true}
const ONE_MACHINE: Positionals = {slots: ['machine']}
const SNAPSHOT: Positionals = {slots: ['machine', 'none']}
const ONE_BOX: Positionals = {slots: ['box']}

/**
 * Every command whose arguments name machines or stored boxes (test/unit/completion.test.ts
 * checks this against the commands' own argument lists). Commands not here take paths or
 * new names: the shell offers file names.
 */
export const COMMAND_POSITIONALS: Readonly<Record<string, Positionals>> = {
  up: MACHINES,
  halt: MACHINES,
  destroy: MACHINES,
  provision: MACHINES,
  reload: MACHINES,
  resnap: MACHINES,
  rsync: MACHINES,
  secure: MACHINES,
  status: MACHINES,
  'ssh-config': MACHINES,
  ssh: ONE_MACHINE,
  port: ONE_MACHINE,
  package: ONE_MACHINE,
  upload: {slots: ['machine-or-path']},
  download: {slots: ['machine-or-path']},
  'snapshot:save': SNAPSHOT,
  'snapshot:restore': SNAPSHOT,
  'snapshot:delete': SNAPSHOT,
  'snapshot:list': {slots: ['machine']},
  'snapshot:push': {slots: ['machine']},
  'snapshot:pop': {slots: ['machine']},
  init: ONE_BOX,
  remove: ONE_BOX,
  outdated: ONE_BOX,
  prune: ONE_BOX,
  update: ONE_BOX,
  repackage: {slots: ['box', 'box-version', 'box-provider']},
}

interface ManifestFlag {
  type: 'boolean' | 'option'
  char?: string
  hidden?: boolean
  options?: string[]
  allowNo?: boolean
}
interface Manifest {
  commands: Record<string, {flags: Record<string, ManifestFlag>}>
}

export interface CompletionSources {
  cwd: string
  dataDir: string
}

/** The candidates for the last of `words` (the words after `box`), or undefined when box has none for that position. */
export async function completionCandidates(
  words: readonly string[],
  sources: CompletionSources,
): Promise<string[] | undefined> {
  if (words.length < 2) return undefined
  const manifest = await readFile(join(PROJECT_ROOT, 'oclif.manifest.json'), 'utf8').then(
    (text) => JSON.parse(text) as Manifest,
    () => undefined,
  )
  if (!manifest) return undefined
  const typed = words.slice(0, -1)
  const current = words.at(-1)!
  // The longest run of leading words that names a command: `snapshot save` is snapshot:save.
  let id: string | undefined
  let used = 0
  for (let count = 1; count <= typed.length && !typed[count - 1]!.startsWith('-'); count++) {
    const candidate = typed.slice(0, count).join(':')
    if (manifest.commands[candidate]) [id, used] = [candidate, count]
  }
  if (id === undefined) return undefined
  const flags = manifest.commands[id]!.flags
  const given = argumentsGiven(typed.slice(used), flags)
  if (given === undefined) return undefined
  // A flag's value: its choices when it has some (--compression gzip|zstd), else a path.
  if (given.valueFor) return given.valueFor.options?.filter((option) => option.startsWith(current))
  // Flags anywhere on the line (the plugin's script completes them only right after the command).
  if (current.startsWith('-'))
    return Object.entries(flags)
      .filter(([, flag]) => !flag.hidden)
      .flatMap(([name, flag]) => [`--${name}`, ...(flag.type === 'boolean' && flag.allowNo ? [`--no-${name}`] : [])])
      .filter((flag) => flag.startsWith(current))
  const positionals = COMMAND_POSITIONALS[id]
  if (!positionals) return undefined
  const named = given.positionals
  const index = positionals.repeat ? Math.min(named.length, positionals.slots.length - 1) : named.length
  const slot = positionals.slots[index]
  if (slot === undefined) return undefined
  const names = await namesFor(slot, named, sources)
  const offered = names.filter((name) => name.startsWith(current) && !(positionals.repeat && named.includes(name)))
  if (slot === 'machine-or-path' && offered.length === 0) return undefined
  return [...new Set(offered)]
}

/**
 * The positional words among `words` (flags and their values left out), and the flag whose
 * value comes next when the last word is one that takes a value; undefined after `--`.
 */
function argumentsGiven(
  words: readonly string[],
  flags: Record<string, ManifestFlag>,
): {positionals: string[]; valueFor?: ManifestFlag} | undefined {
  const byChar = new Map(Object.values(flags).flatMap((flag) => (flag.char ? [[flag.char, flag] as const] : [])))
  const positionals: string[] = []
  for (let i = 0; i < words.length; i++) {
    const word = words[i]!
    if (word === '--') return undefined
    let flag: ManifestFlag | undefined
    if (word.startsWith('--')) flag = word.includes('=') ? undefined : flags[word.slice(2)]
    else if (word.startsWith('-') && word.length === 2) flag = byChar.get(word[1]!)
    else if (!word.startsWith('-') || word === '-') positionals.push(word)
    if (flag?.type === 'option') {
      if (i === words.length - 1) return {positionals, valueFor: flag}
      i++
    }
  }
  return {positionals}
}

async function namesFor(slot: Slot, given: readonly string[], sources: CompletionSources): Promise<string[]> {
  switch (slot) {
    case 'machine':
    case 'machine-or-path': {
      const boxfile = await loadBoxfileIfFound({cwd: sources.cwd}).catch(() => undefined)
      return boxfile?.machines.map((machine) => machine.name) ?? []
    }
    case 'box':
      return (await listBoxes(sources.dataDir).catch(() => [])).map((box) => box.name)
    case 'box-version':
    case 'box-provider': {
      const name = given[0]
      if (name === undefined) return []
      const boxes = await listBoxes(sources.dataDir, {name}).catch(() => [])
      return slot === 'box-version'
        ? boxes.map((box) => box.version)
        : boxes.filter((box) => box.version === given[1]).map((box) => box.provider)
    }
    case 'none':
      return []
  }
}
