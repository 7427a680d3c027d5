/**
 * Shell completion (@oclif/plugin-autocomplete): the scripts `box autocomplete` writes,
 * loaded by a real bash (its completion function called as bash's completion calls it) and
 * a real zsh (compinit in a tmux terminal, Tab pressed). Commands and flags are completed;
 * machine and box names are not (the plugin's 3.x scripts are static: see the report).
 */
import {readFile} from 'node:fs/promises'
import {dirname, join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {makeTempDir} from '../fixtures/boxes.js'
import {BIN, box, type CliEnv} from '../support/cli.js'

describe('shell completion', () => {
  let dir: string
  let cleanup: () => Promise<void>
  let env: CliEnv
  const functions = () => join(env.cacheDir, 'autocomplete', 'functions')
  const tmuxSocket = `box-completion-test-${process.pid}`

  beforeAll(async () => {
    ;({dir, cleanup} = await makeTempDir('box-completion-'))
    env = {cwd: dir, dataDir: join(dir, 'data'), cacheDir: join(dir, 'cache')}
    const built = await box(env, ['autocomplete', '--refresh-cache'])
    expect(built.exitCode, built.stderr).toBe(0)
  })

  afterAll(async () => {
    await execa('tmux', ['-L', tmuxSocket, 'kill-server'], {reject: false})
    await cleanup?.()
  })

  /** What bash offers for the words typed so far (the last one being completed). */
  const bashCompletes = async (...words: string[]) => {
    const script = `source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _box_autocomplete; printf '%s\\n' "\${COMPREPLY[@]}"`
    return (await execa('bash', ['-c', script, 'bash', join(functions(), 'bash', 'box.bash'), 'box', ...words])).stdout
      .split(/\s+/)
      .filter(Boolean)
  }

  it("bash: command names, then each command's flags", async () => {
    const commands = await bashCompletes('')
    for (const name of ['up', 'ssh', 'port', 'upload', 'download', 'repackage', 'add', 'autocomplete'])
      expect(commands).toContain(name)
    expect(await bashCompletes('re')).toEqual(['reload', 'remove', 'repackage', 'resnap'])
    expect(await bashCompletes('port', '--')).toEqual(['--json', '--no-color', '--guest'])
    expect(await bashCompletes('repackage', '--c')).toEqual(['--compression'])
    // The line box prints for ~/.bashrc sources the setup that loads this script.
    expect((await box(env, ['autocomplete', 'script', 'bash'])).stdout).toContain(
      join(env.cacheDir, 'autocomplete', 'bash_setup'),
    )
  })

  it('zsh: Tab completes a command, then a flag, in a real terminal', async () => {
    const tmux = (args: string[]) => execa('tmux', ['-L', tmuxSocket, ...args], {stdin: 'ignore'})
    await tmux([
      'new-session',
      '-d',
      '-s',
      'zsh',
      '-x',
      '120',
      '-y',
      '30',
      '-c',
      dir,
      '-e',
      `BOX_CACHE_DIR=${env.cacheDir}`,
      '-e',
      `PATH=${dirname(BIN)}:${process.env.PATH}`,
      'zsh',
      '-f',
    ])
    const screen = async () => (await tmux(['capture-pane', '-p', '-t', 'zsh'])).stdout
    const waitFor = async (pattern: RegExp) => {
      const deadline = Date.now() + 20_000
      for (;;) {
        const shown = await screen()
        if (pattern.test(shown)) return shown
        if (Date.now() > deadline) throw new Error(`zsh never showed ${pattern}; it shows:\n${shown}`)
        await sleep(100)
      }
    }
    await tmux([
      'send-keys',
      '-t',
      'zsh',
      `fpath=(${join(functions(), 'zsh')} $fpath); autoload -Uz compinit; compinit -u; echo RE''ADY`,
      'Enter',
    ])
    await waitFor(/^READY$/m)
    await tmux(['send-keys', '-t', 'zsh', 'box repack', 'Tab'])
    await waitFor(/box repackage$/m) // capture-pane drops the trailing space
    await tmux(['send-keys', '-t', 'zsh', 'C-u', 'box port --gu', 'Tab'])
    await waitFor(/box port --guest/m)
    expect(await readFile(join(functions(), 'zsh', '_box'), 'utf8')).toMatch(/^#compdef box/)
  })
})
