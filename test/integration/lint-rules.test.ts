/**
 * The lint rules of eslint.config.js that hold a README claim (npm test runs `eslint .`):
 * src/ starts programs only through src/lib/core/exec.ts, never with a shell. Code that
 * breaks them is linted through ESLint's API with the project's own config, under a src/
 * path (a .js one: no TypeScript program to load for the type-aware rules).
 */
import {ESLint} from 'eslint'
import {beforeAll, describe, expect, it} from 'vitest'

import {PROJECT_ROOT} from '../../src/lib/core/paths.js'

const EXEC = 'src/lib/core/exec.ts'

describe('eslint.config.js: child processes only through src/lib/core/exec.ts, no shell', () => {
  let eslint: ESLint

  beforeAll(() => {
    eslint = new ESLint({cwd: PROJECT_ROOT})
  })

  /** The lines on which `code`, linted as `filePath`, breaks no-restricted-imports or no-restricted-syntax. */
  async function restricted(code: string, filePath: string): Promise<string[]> {
    const [result] = await eslint.lintText(code, {filePath})
    return result!.messages
      .filter((message) => ['no-restricted-imports', 'no-restricted-syntax'].includes(message.ruleId ?? ''))
      .map((message) => `${message.line}: ${message.message}`)
  }

  it('refuses execa and node:child_process in src/, however loaded, and shell: true', async () => {
    const code = [
      "import {execa} from 'execa'",
      "import {spawn} from 'node:child_process'",
      "import {exec} from 'child_process'",
      "export const later = () => import('node:child_process')",
      "export const required = (load) => load('execa')",
      "export const options = {shell: true, 'shell': true}",
      'export const fine = {shell: process.env.SHELL, other: true}',
      "export const words = ['execa', 'shell']",
      'export {execa, spawn, exec}',
    ].join('\n')
    const lines = await restricted(code, 'src/lib/machine/example.js')
    const exec = /only through src\/lib\/core\/exec\.ts/
    const shell = /no shell: true/
    expect(lines.filter((line) => exec.test(line)).map((line) => Number.parseInt(line, 10))).toEqual([1, 2, 3, 4, 5])
    expect(lines.filter((line) => shell.test(line)).map((line) => Number.parseInt(line, 10))).toEqual([6, 6])
    expect(lines).toHaveLength(7)
    // oclif's own restricted modules (Node's deprecated ones) are still refused alongside.
    expect(await restricted("import punycode from 'punycode'\nexport {punycode}", 'src/cli/example.js')).toHaveLength(1)
  })

  it('src/lib/core/exec.ts alone may load them, and it too may not ask for a shell', async () => {
    const forExec = await eslint.calculateConfigForFile(EXEC)
    const forOther = await eslint.calculateConfigForFile('src/lib/machine/ssh.ts')
    const names = (config: {rules: Record<string, unknown[]>}) =>
      JSON.stringify(config.rules['no-restricted-imports']).match(/execa|child_process/g) ?? []
    expect(names(forExec)).toEqual([])
    expect(names(forOther)).toEqual(['execa', 'child_process', 'child_process'])
    const syntax = (config: {rules: Record<string, unknown[]>}) =>
      (config.rules['no-restricted-syntax']!.slice(1) as Array<{message: string}>).map((entry) => entry.message)
    expect(syntax(forExec)).toEqual([expect.stringMatching(/no shell: true/)])
    expect(syntax(forOther)).toEqual([
      expect.stringMatching(/only through/),
      expect.stringMatching(/only through/),
      expect.stringMatching(/no shell: true/),
    ])
  })
})
