import {Args, type Command} from '@oclif/core'

import {BaseCommand} from './base-command.js'

import type {ResolvedMachine} from '../lib/boxfile/types.js'
import {BoxError, ExitCode} from '../lib/core/errors.js'
import type {MachineContext} from '../lib/machine/context.js'
import {openProject} from '../lib/machine/project.js'

/**
 * Base of `box snapshot …`: arguments as Vagrant takes them, `[NAME] SNAPSHOT`. With one
 * word it is the snapshot (every machine of the Boxfile), with two the machine and the snapshot.
 */
export abstract class SnapshotCommand<T extends typeof Command> extends BaseCommand<T> {
  static args = {
    name: Args.string({description: 'Machine name from the Boxfile (default: all of them).', required: false}),
    snapshot: Args.string({description: 'Snapshot name.', required: false}),
  }

  static strict = true

  protected async snapshotTarget(): Promise<{machines: ResolvedMachine[]; context: MachineContext; snapshot: string}> {
    const words = this.positionals
    if (words.length === 0)
      throw new BoxError(`box ${this.id?.replaceAll(':', ' ')} needs a snapshot name`, {
        exitCode: ExitCode.USAGE,
        suggestions: [`box ${this.id?.replaceAll(':', ' ')} [MACHINE] SNAPSHOT`],
      })
    const snapshot = words.at(-1)!
    const {machines, context} = await this.machinesNamed(words.slice(0, -1))
    return {machines, context, snapshot}
  }

  protected machinesNamed(names: string[]): Promise<{machines: ResolvedMachine[]; context: MachineContext}> {
    return openProject({
      version: this.config.version,
      names,
      dataDir: this.config.dataDir,
      cacheDir: this.config.cacheDir,
      progress: this.progress(),
      signal: this.signal,
    })
  }
}
