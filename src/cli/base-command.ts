import {Command, Flags, type Interfaces} from '@oclif/core'

import {BoxError, boxErrorJson, ExitCode, formatBoxError} from '../lib/core/errors.js'
import {createProgress, type Progress} from '../lib/core/progress.js'
import {listenForInterrupt, type Interrupt} from './interrupt.js'

export type FlagsOf<T extends typeof Command> = Interfaces.InferredFlags<(typeof BaseCommand)['baseFlags'] & T['flags']>
export type ArgsOf<T extends typeof Command> = Interfaces.InferredArgs<T['args']>

/**
 * Every box command extends this: typed `this.flags`/`this.args`, an AbortSignal
 * that Ctrl-C trips (so library code can clean up), progress on stderr, and
 * BoxError printed as message, detail and suggestions with its exit code.
 */
export abstract class BaseCommand<T extends typeof Command> extends Command {
  static baseFlags = {
    'no-color': Flags.boolean({
      helpGroup: 'GLOBAL',
      description: 'Disable colors and spinners (plain progress lines).',
    }),
  }

  protected flags!: FlagsOf<T>
  protected args!: ArgsOf<T>
  /** Positional arguments as parsed (for commands with `strict = false`). */
  protected positionals: string[] = []
  private interrupt?: Interrupt
  /** Until init listens for signals: a signal that never aborts. */
  private readonly neverAborted = new AbortController().signal

  /** Aborted on the first Ctrl-C / SIGTERM; a second one exits at once. */
  protected get signal(): AbortSignal {
    return this.interrupt?.signal ?? this.neverAborted
  }

  public async init(): Promise<void> {
    await super.init()
    const {args, flags, argv} = await this.parse({
      flags: this.ctor.flags,
      baseFlags: (super.ctor as typeof BaseCommand).baseFlags,
      enableJsonFlag: this.ctor.enableJsonFlag,
      // oclif reads a missing argument from piped stdin: a machine name would come out of
      // `--password-stdin`'s password or a script meant for the guest. Arguments come from argv only.
      args: Object.fromEntries(
        Object.entries(this.ctor.args ?? {}).map(([name, arg]) => [name, {...arg, ignoreStdin: true}]),
      ),
      strict: this.ctor.strict,
    })
    this.flags = flags as FlagsOf<T>
    this.args = args as ArgsOf<T>
    this.positionals = argv as string[]
    this.interrupt = listenForInterrupt()
  }

  /** Rows as aligned columns, two spaces apart. */
  protected logTable(rows: readonly (readonly string[])[]): void {
    const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)))
    for (const row of rows)
      this.log(
        row
          .map((cell, column) => cell.padEnd(widths[column]!))
          .join('  ')
          .trimEnd(),
      )
  }

  protected progress(): Progress {
    return createProgress({plain: this.flags['no-color'], silent: this.jsonEnabled()})
  }

  protected async catch(error: Error & {exitCode?: number}): Promise<unknown> {
    const reason = this.signal.aborted ? this.signal.reason : undefined
    // @inquirer/prompts reads Ctrl-C itself (the terminal is raw) and rejects with ExitPromptError.
    const promptClosed =
      error.name === 'ExitPromptError'
        ? new BoxError('interrupted: the question was not answered', {exitCode: ExitCode.INTERRUPTED})
        : undefined
    const boxError =
      error instanceof BoxError
        ? error
        : (promptClosed ?? (reason instanceof BoxError && this.interrupt?.interrupted ? reason : undefined))
    if (!boxError) return super.catch(error)
    if (this.jsonEnabled()) this.logJson(boxErrorJson(boxError))
    else process.stderr.write(formatBoxError(boxError))
    process.exitCode = boxError.exitCode
    return undefined
  }

  protected async finally(error: Error | undefined): Promise<unknown> {
    this.interrupt?.dispose()
    return super.finally(error)
  }
}
