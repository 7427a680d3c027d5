import {Args, Flags} from '@oclif/core'

import {copyFiles, type TransferResult} from '../lib/machine/transfer.js'
import {MachineCommand} from './machine-command.js'

/** `box upload` and `box download`: the same words and flags, the copy's direction apart. */
export abstract class CopyCommand extends MachineCommand<typeof CopyCommand> {
  static usage = '<%= command.id %> [NAME] SOURCE [DESTINATION] [--compress] [--json]'
  static strict = true
  static enableJsonFlag = true
  static args = {
    names: Args.string({description: 'Machine name from the Boxfile (needed when it has several).', required: false}),
    source: Args.string({description: 'What to copy.', required: false}),
    destination: Args.string({description: 'Where the copy goes.', required: false}),
  }

  static flags = {
    compress: Flags.boolean({description: 'gzip the stream (for slow links; the guest needs gzip).', default: false}),
  }

  protected abstract readonly direction: 'upload' | 'download'

  async run(): Promise<TransferResult> {
    return copyFiles(this.direction, {...this.projectOptions(), words: this.positionals, compress: this.flags.compress})
  }
}
