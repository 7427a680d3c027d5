/**
 * A real terminal for the CLI: a private tmux server whose pane runs `box ARGS…` and is read
 * back as a user sees it (capture-pane), and answered key by key.
 */
import {readFile} from 'node:fs/promises'
import {setTimeout as sleep} from 'node:timers/promises'
import {execa} from 'execa'

import {BIN, type CliEnv} from './cli.js'

export class Terminal {
  private readonly socket: string
  private session = ''

  constructor(name: string) {
    this.socket = `box-${name}-test-${process.pid}`
  }

  /** A new session (160 × 40) running `box ARGS…`; box's exit code is written to `exitFile`. */
  async start(session: string, env: CliEnv, exitFile: string, args: string[]): Promise<void> {
    this.session = session
    await this.tmux([
      'new-session',
      '-d',
      '-s',
      session,
      '-x',
      '160',
      '-y',
      '40',
      '-c',
      env.cwd,
      '-e',
      `BOX_DATA_DIR=${env.dataDir}`,
      '-e',
      `BOX_CACHE_DIR=${env.cacheDir}`,
      '-e',
      'NO_COLOR=1',
      '-e',
      `EXIT_FILE=${exitFile}`,
      // The pane stays open after box exits, to be read.
      'sh',
      '-c',
      '"$0" "$@"; echo $? > "$EXIT_FILE"; sleep 600',
      BIN,
      ...args,
    ])
  }

  async tmux(args: string[], input?: string): Promise<string> {
    return (await execa('tmux', ['-L', this.socket, ...args], input === undefined ? {stdin: 'ignore'} : {input})).stdout
  }

  /** What the pane shows; with `all`, the lines scrolled off its top too. */
  screen(all = false): Promise<string> {
    return this.tmux(['capture-pane', '-p', '-t', this.session, ...(all ? ['-S', '-'] : [])])
  }

  async waitFor(predicate: (screen: string) => boolean, what: string, timeoutMs = 60_000): Promise<string> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const screen = await this.screen()
      if (predicate(screen)) return screen
      if (Date.now() > deadline) throw new Error(`the terminal never showed ${what}; it shows:\n${screen}`)
      await sleep(200)
    }
  }

  /**
   * The pane's bottom line (the live one while a stage runs), read every `intervalMs`
   * until box wrote its exit code to `exitFile`; returns the exit code and each line seen.
   */
  async sampleUntilExit(
    exitFile: string,
    timeoutMs: number,
    intervalMs = 50,
  ): Promise<{exitCode: string | undefined; lines: string[]}> {
    const lines: string[] = []
    const deadline = Date.now() + timeoutMs
    while (Date.now() < deadline) {
      const text = await readFile(exitFile, 'utf8').catch(() => '')
      if (text.endsWith('\n')) return {exitCode: text.trim(), lines}
      const rows = (await this.screen()).split('\n').filter((row) => row.trim() !== '')
      const last = rows.at(-1)
      if (last !== undefined && last !== lines.at(-1)) lines.push(last)
      await sleep(intervalMs)
    }
    return {exitCode: undefined, lines}
  }

  async keys(...keys: string[]): Promise<void> {
    await this.tmux(['send-keys', '-t', this.session, ...keys])
  }

  /** Typed text that must not appear on any command line: through a paste buffer fed on stdin. */
  async typeSecret(text: string): Promise<void> {
    await this.tmux(['load-buffer', '-b', 'secret', '-'], text)
    await this.tmux(['paste-buffer', '-d', '-b', 'secret', '-t', this.session])
  }

  async kill(): Promise<void> {
    await execa('tmux', ['-L', this.socket, 'kill-server'], {reject: false})
  }
}

/** The exit code a pane started by Terminal.start wrote to `file`, or undefined if none came in `timeoutMs`. */
export async function exitCodeIn(file: string, timeoutMs: number): Promise<string | undefined> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    const text = await readFile(file, 'utf8').catch(() => '')
    if (text.endsWith('\n')) return text.trim()
    await sleep(250)
  }
  return undefined
}

/** The non-empty rows of a screen. */
export function screenRows(screen: string): string[] {
  return screen.split('\n').filter((row) => row.trim() !== '')
}

const SPINNER = /[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]/

/**
 * Why a finished command's screen does not read cleanly, or undefined when it does: a
 * spinner left behind, or a stage's line run together with other output (a mark or a
 * stage's time with more text glued on, as `… (7.1 s)default: runsecure: …`).
 */
export function uncleanRow(rows: string[]): string | undefined {
  for (const row of rows) {
    if (SPINNER.test(row)) return `a spinner is left on the screen: ${row}`
    if (/.[✔✘]/.test(row)) return `a finished stage's line does not start its row: ${row}`
    if (/\(\d+(\.\d)? s\)[^\s:)]/.test(row) || /\(\d+ min \d+ s\)[^\s:)]/.test(row))
      return `a stage's line runs into other output: ${row}`
  }
  return undefined
}

/** formatDuration's text ("7.1 s", "23 s", "2 min 5 s") back to milliseconds. */
export function parseDuration(text: string): number {
  const match = /^(?:(\d+) min )?(\d+(?:\.\d+)?) s$/.exec(text)
  if (!match) throw new Error(`not a duration: ${text}`)
  return (Number(match[1] ?? 0) * 60 + Number(match[2])) * 1000
}
