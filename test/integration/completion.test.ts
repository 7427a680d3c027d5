/**
 * Shell completion (@oclif/plugin-autocomplete): the scripts `box autocomplete` writes,
 * loaded by a real bash (its completion function called as bash's completion calls it) and
 * a real zsh (compinit in a tmux terminal, Tab pressed): commands and flags (the plugin's),
 * machine names from the Boxfile and box names, versions and providers from the store (the
 * lines box adds, which ask `box __complete`). A folder without a Boxfile: commands only.
 */
import {mkdir, readFile, writeFile} from 'node:fs/promises'
import {dirname, join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {makeBoxFile, makeTempDir} from '../fixtures/boxes.js'
import {BIN, box, type CliEnv} from '../support/cli.js'

describe('shell completion', () => {
  let dir: string
  let cleanup: () => Promise<void>
  let env: CliEnv
  /** A folder with no Boxfile in it or above. */
  let bare: string
  const functions = () => join(env.cacheDir, 'autocomplete', 'functions')
  const tmuxSocket = `box-completion-test-${process.pid}`

  beforeAll(async () => {
    ;({dir, cleanup} = await makeTempDir('box-completion-'))
    env = {cwd: join(dir, 'project'), dataDir: join(dir, 'data'), cacheDir: join(dir, 'cache')}
    bare = join(dir, 'bare')
    await mkdir(env.cwd)
    await mkdir(bare)
    await writeFile(
      join(env.cwd, 'Boxfile'),
      'box: org/worker\nmachines:\n  web: {}\n  db: {memory: 1G}\n  worker-1: {box: other}\n',
    )
    const boxFile = await makeBoxFile(dir)
    for (const [name, version] of [
      ['org/worker', '1.0'],
      ['org/worker', '2.0'],
      ['other', '0.1'],
    ]) {
      const added = await box(env, ['add', name!, boxFile, '--box-version', version!])
      expect(added.exitCode, added.stderr).toBe(0)
    }
    const built = await box(env, ['autocomplete', '--refresh-cache'])
    expect(built.exitCode, built.stderr).toBe(0)
  })

  afterAll(async () => {
    await execa('tmux', ['-L', tmuxSocket, 'kill-server'], {reject: false})
    await cleanup?.()
  })

  /**
   * What bash offers for the words typed so far (the last one being completed), run in `cwd`
   * as bash's completion runs the function `complete -F` names; "<files>" when it leaves the
   * word to bash's file name completion. Nothing may reach the terminal's stderr.
   */
  const bashCompletes = async (...words: string[]) => bashCompletesIn(env.cwd, ...words)
  const bashCompletesIn = async (cwd: string, ...words: string[]) => {
    // compopt works only inside a completion bash itself started: the stand-in records the call.
    const script = `source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
      compopt() { [[ "$*" == "-o default" ]] && files='<files>'; }
      function=$(complete -p box); function=\${function#*-F }; "\${function%% *}"
      printf '%s\\n' "\${COMPREPLY[@]}" $files`
    const result = await execa('bash', ['-c', script, 'bash', join(functions(), 'bash', 'box.bash'), 'box', ...words], {
      cwd,
      env: {BOX_DATA_DIR: env.dataDir, BOX_CACHE_DIR: env.cacheDir, PATH: `${dirname(BIN)}:${process.env.PATH}`},
    })
    expect(result.stderr).toBe('')
    return result.stdout.split(/\s+/).filter(Boolean)
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

  it('bash: machine names from the Boxfile where a command takes them', async () => {
    expect(await bashCompletes('up', '')).toEqual(['web', 'db', 'worker-1'])
    expect(await bashCompletes('up', 'w')).toEqual(['web', 'worker-1'])
    // Commands that take several machines leave out those already named, flags and their values skipped.
    expect(await bashCompletes('halt', 'web', '--force', '')).toEqual(['db', 'worker-1'])
    expect(await bashCompletes('snapshot', 'save', 'd')).toEqual(['db'])
    expect(await bashCompletes('ssh', '-c', 'uptime', 'wo')).toEqual(['worker-1'])
    // ssh takes one machine; after it, and after `--`, come the guest's words: box has no names there.
    expect(await bashCompletes('ssh', 'web', '')).toEqual(['<files>'])
    expect(await bashCompletes('up', '--', '')).toEqual(['<files>'])
    // upload's first word is a machine or a host path: names when one matches, else file names.
    expect(await bashCompletes('upload', 'd')).toEqual(['db'])
    expect(await bashCompletes('upload', './s')).toEqual(['<files>'])
    // The plugin's own completion still answers for subcommands and flags.
    expect(await bashCompletes('snapshot', 'res')).toEqual(['restore'])
    // Flags after an argument, and a flag's choices, come from box (the plugin's script has none there).
    expect(await bashCompletes('up', 'web', '--prov')).toEqual(['--provision'])
    expect(await bashCompletes('up', 'web', '--no-p')).toEqual(['--no-provision'])
    expect(await bashCompletes('repackage', 'other', '--compression', '')).toEqual(['gzip', 'zstd'])
    expect(await bashCompletes('repackage', 'other', '-o', '')).toEqual(['<files>'])
  })

  it('bash: box names, versions and providers from the store', async () => {
    expect(await bashCompletes('remove', '')).toEqual(['org/worker', 'other'])
    expect(await bashCompletes('init', 'o')).toEqual(['org/worker', 'other'])
    expect(await bashCompletes('repackage', 'org/worker', '')).toEqual(['2.0', '1.0'])
    expect(await bashCompletes('repackage', 'org/worker', '1.0', '')).toEqual(['qemu'])
    expect(await bashCompletes('repackage', 'org/worker', '3.0', '')).toEqual([])
    // A new box's name is not one of these: `box add NAME SOURCE` completes file names.
    expect(await bashCompletes('add', 'x', '')).toEqual(['<files>'])
  })

  it('bash, in a folder without a Boxfile: commands, no machine names, no error', async () => {
    expect(await bashCompletesIn(bare, 'st')).toEqual(['status'])
    expect(await bashCompletesIn(bare, 'up', '')).toEqual([])
    expect(await bashCompletesIn(bare, 'snapshot', 'list', '')).toEqual([])
    // Box names do not depend on the folder.
    expect(await bashCompletesIn(bare, 'update', 'oth')).toEqual(['other'])
  })

  it('box __complete answers without a Boxfile or store, and with a broken Boxfile', async () => {
    const empty = {cwd: bare, dataDir: join(dir, 'no-store'), cacheDir: env.cacheDir}
    const none = await box(empty, ['__complete', 'remove', ''])
    expect([none.exitCode, none.stdout, none.stderr]).toEqual([0, '', ''])
    const broken = join(dir, 'broken')
    await mkdir(broken)
    await writeFile(join(broken, 'Boxfile'), 'machines: [not, a, map]\n')
    const fromBroken = await box({...env, cwd: broken}, ['__complete', 'up', ''])
    expect([fromBroken.exitCode, fromBroken.stdout, fromBroken.stderr]).toEqual([0, '', ''])
    const unknown = await box(env, ['__complete', 'no-such-command', ''])
    expect([unknown.exitCode, unknown.stdout, unknown.stderr]).toEqual([1, '', ''])
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
      env.cwd,
      '-e',
      `BOX_CACHE_DIR=${env.cacheDir}`,
      '-e',
      `BOX_DATA_DIR=${env.dataDir}`,
      // tmux's -e does not reach the shell's PATH here: env sets it.
      'env',
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
    // Machine names: the one that starts with "wo", then the only box version left.
    await tmux(['send-keys', '-t', 'zsh', 'C-u', 'box up wo', 'Tab'])
    await waitFor(/box up worker-1$/m)
    await tmux(['send-keys', '-t', 'zsh', 'C-u', 'box repackage other ', 'Tab'])
    await waitFor(/box repackage other 0\.1$/m)
    expect(await readFile(join(functions(), 'zsh', '_box'), 'utf8')).toMatch(/^#compdef box/)
  })
})
