/** The completion table (src/cli/completion.ts) against the commands' own argument lists. */
import {readdir} from 'node:fs/promises'
import {join, relative} from 'node:path'
import {describe, expect, it} from 'vitest'

import {COMMAND_POSITIONALS} from '../../src/cli/completion.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'

interface CommandClass {
  args?: Record<string, {description?: string}>
}

async function commands(): Promise<Map<string, CommandClass>> {
  const root = join(PROJECT_ROOT, 'src', 'commands')
  const files = (await readdir(root, {recursive: true})).filter((file) => file.endsWith('.ts'))
  const found = new Map<string, CommandClass>()
  for (const file of files) {
    const id = relative(root, join(root, file)).replace(/\.ts$/, '').replaceAll('/', ':')
    found.set(id, ((await import(join(root, file))) as {default: CommandClass}).default)
  }
  return found
}

describe('completion table', () => {
  it('names every command whose arguments are machines or stored boxes, with one slot per argument', async () => {
    const all = await commands()
    for (const id of Object.keys(COMMAND_POSITIONALS)) expect(all.has(id), id).toBe(true)
    for (const [id, command] of all) {
      const args = Object.values(command.args ?? {})
      // `box add NAME SOURCE` names a new box (or takes a catalog path): nothing to offer.
      const takesNames =
        id !== 'add' &&
        args.some((arg) => /machine name|the machine|box name|name of the box|this box/i.test(arg.description ?? ''))
      expect(takesNames, `${id}: ${args.map((arg) => arg.description).join(' | ')}`).toBe(id in COMMAND_POSITIONALS)
      const table = COMMAND_POSITIONALS[id]
      if (table) expect(table.slots.length, id).toBeLessThanOrEqual(Math.max(args.length, 1))
    }
  })
})
