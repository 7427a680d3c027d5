/**
 * Flaggable prompts (after oclif's GeneratorCommand): an answer comes from its flag; without
 * one, from a question when box may ask (a terminal, no --yes); else from its default; else
 * it is a usage error naming the flag — never a hang waiting for input nobody gives.
 */
import {BoxError, ExitCode} from '../lib/core/errors.js'

export type Prompts = typeof import('@inquirer/prompts')

export interface FlaggablePrompt<T> {
  /** The flag's name, for messages: "--role". */
  flagName: string
  /** The flag's value; undefined when not given. */
  flag: T | undefined
  /** Why a flag's value is not acceptable, or undefined. */
  validate?: (value: T) => string | undefined
  /** Ask for it (only called when box may ask). */
  ask: (prompts: Prompts) => Promise<T>
  /** Taken without a flag when box asks nothing. */
  default?: T
  /** For the error when there is no answer: what is missing ("user name") and a flag example. */
  what: string
  example: string
}

/** Where answers come from: whether box may ask, and @inquirer/prompts, loaded only then. */
export class Asker {
  private prompts?: Promise<Prompts>

  constructor(readonly interactive: boolean) {}

  async answer<T>(prompt: FlaggablePrompt<T>): Promise<T> {
    if (prompt.flag !== undefined) {
      const problem = prompt.validate?.(prompt.flag)
      if (problem) throw new BoxError(`${prompt.flagName}: ${problem}`, {exitCode: ExitCode.USAGE})
      return prompt.flag
    }
    if (this.interactive) {
      this.prompts ??= import('@inquirer/prompts')
      return prompt.ask(await this.prompts)
    }
    if (prompt.default !== undefined) return prompt.default
    throw new BoxError(`no ${prompt.what} given, and box asks no questions here (no terminal, or --yes)`, {
      exitCode: ExitCode.USAGE,
      suggestions: [`pass ${prompt.flagName}, e.g. ${prompt.example}`],
    })
  }
}

/** Whether a command may ask: standard input and output are a terminal and --yes was not given. */
export function mayAsk(yes: boolean | undefined): boolean {
  return !yes && process.stdin.isTTY === true && process.stdout.isTTY === true
}
