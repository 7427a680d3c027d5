import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'

export default class Remove extends BaseCommand<typeof Remove> {
  static summary = 'Remove a box from the local store.'
  static description =
    'Refused while a machine on this host is backed by the box (see box global-status), and when several versions or providers match and neither --box-version nor --all says which.'
  static examples = [
    '<%= config.bin %> remove worker',
    '<%= config.bin %> remove worker --box-version 1.0.0',
    '<%= config.bin %> remove worker --all',
  ]
  static enableJsonFlag = true

  static args = {
    name: Args.string({required: true, description: 'Box name.'}),
  }

  static flags = {
    'box-version': Flags.string({description: 'Remove only this version.'}),
    provider: Flags.string({description: 'Remove only this provider.'}),
    all: Flags.boolean({description: 'Remove every matching version and provider.'}),
    force: Flags.boolean({description: 'Remove even if machines use the box (they will no longer start).'}),
  }

  public async run() {
    const {removeBox} = await import('../lib/store/remove.js')
    const removed = await removeBox({
      dataDir: this.config.dataDir,
      name: this.args.name,
      version: this.flags['box-version'],
      provider: this.flags.provider,
      all: this.flags.all,
      force: this.flags.force,
    })
    for (const box of removed) this.log(`Removed box ${box.name} ${box.version} (${box.provider})`)
    return removed
  }
}
