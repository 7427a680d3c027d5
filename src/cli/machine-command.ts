import {Args, Command} from '@oclif/core'

import {BaseCommand} from './base-command.js'
import type {ResolvedMachine} from '../lib/boxfile/types.js'
import type {MachineContext} from '../lib/machine/context.js'
import {openProject, type OpenProjectOptions} from '../lib/machine/project.js'

/** Base of the commands that act on the machines of the Boxfile (`box up [NAME…]`). */
export abstract class MachineCommand<T extends typeof Command> extends BaseCommand<T> {
  static args = {
    names: Args.string({description: 'Machine names from the Boxfile (default: all of them).', required: false}),
  }

  static strict = false

  /** Words after `--` on the command line (a command for the guest). */
  protected get guestCommand(): string[] {
    const separator = this.argv.indexOf('--')
    return separator === -1 ? [] : this.argv.slice(separator + 1)
  }

  /** The machines named on the command line (or `names`, for commands whose other words are not names). */
  protected async project(names?: string[]): Promise<{machines: ResolvedMachine[]; context: MachineContext}> {
    const project = await openProject({
      ...this.projectOptions(),
      names: names ?? this.positionals.slice(0, this.positionals.length - this.guestCommand.length),
    })
    // Guest output (provisioners) must not mix with the JSON document on stdout.
    if (this.jsonEnabled()) project.context.output = (line) => process.stderr.write(`${line}\n`)
    return project
  }

  /** What opening the project needs of this command, for lib functions that open it themselves. */
  protected projectOptions(): Omit<OpenProjectOptions, 'names'> {
    return {
      version: this.config.version,
      dataDir: this.config.dataDir,
      cacheDir: this.config.cacheDir,
      progress: this.progress(),
      signal: this.signal,
    }
  }
}
