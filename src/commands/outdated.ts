import {Args} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {downloadFlags} from '../cli/download-flags.js'

export default class Outdated extends BaseCommand<typeof Outdated> {
  static summary = 'Show installed boxes that have a newer version in their catalog.'
  static description =
    'Asks the catalog each box was added from (box add CATALOG remembers it). Boxes added from a file or a .box URL have no catalog to ask.'
  static examples = ['<%= config.bin %> outdated', '<%= config.bin %> outdated org/worker --json']
  static enableJsonFlag = true

  static args = {
    name: Args.string({description: 'Only this box.'}),
  }

  static flags = {...downloadFlags}

  public async run() {
    const {checkOutdated} = await import('../lib/store/updates.js')
    const entries = await checkOutdated({
      dataDir: this.config.dataDir,
      name: this.args.name,
      signal: this.signal,
      http: {caCertFile: this.flags['ca-cert']},
    })
    if (entries.length === 0) {
      this.log('There are no boxes installed.')
      return entries
    }
    const describe = (entry: (typeof entries)[number]) =>
      ({
        outdated: `${entry.latest} available (box update ${entry.name})`,
        'up-to-date': 'up to date',
        'no-catalog': 'no catalog (added from a file or .box URL)',
        error: `cannot check: ${entry.error}`,
      })[entry.status]
    const rows = [
      ['NAME', 'PROVIDER', 'INSTALLED', 'LATEST', 'STATUS'],
      ...entries.map((entry) => [entry.name, entry.provider, entry.installed, entry.latest ?? '-', describe(entry)]),
    ]
    this.logTable(rows)
    return entries
  }
}
