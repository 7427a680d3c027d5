import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {escapeBoxName} from '../lib/store/layout.js'
import {repackageBox, type Repackaged} from '../lib/store/repackage.js'

export default class Repackage extends BaseCommand<typeof Repackage> {
  static summary = 'Write an installed box back into a .box file (as vagrant box repackage).'
  static description =
    "The archive holds the members the box was added with, byte for byte (metadata.json, the disk, Vagrantfile, …); only box's own note of where it came from is left out."
  static examples = [
    'box repackage debian/bookworm64 1.2.0 libvirt',
    'box repackage worker 0 libvirt -o worker.box --compression zstd',
  ]
  static enableJsonFlag = true
  static args = {
    name: Args.string({description: 'Box name (as box list shows it).', required: true}),
    version: Args.string({description: 'Box version.', required: true}),
    provider: Args.string({description: 'Box provider (libvirt, virtualbox, …).', required: true}),
  }
  static flags = {
    output: Flags.string({char: 'o', description: 'The .box to write (default: ./<name>-<version>-<provider>.box).'}),
    compression: Flags.string({
      options: ['gzip', 'zstd'],
      default: 'gzip',
      description: 'gzip (what every Vagrant reads) or zstd (smaller, faster).',
    }),
    force: Flags.boolean({char: 'f', description: 'Replace an existing output file.'}),
  }

  async run(): Promise<Repackaged> {
    const {name, version, provider} = this.args
    const result = await repackageBox({
      dataDir: this.config.dataDir,
      name,
      version,
      provider,
      output: this.flags.output ?? `${escapeBoxName(name)}-${version}-${provider}.box`,
      compression: this.flags.compression as 'gzip' | 'zstd',
      force: this.flags.force,
      progress: this.progress(),
      signal: this.signal,
    })
    this.log(result.output)
    return result
  }
}
