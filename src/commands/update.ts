import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {downloadFlags} from '../cli/download-flags.js'

export default class Update extends BaseCommand<typeof Update> {
  static summary = 'Download the newest version of a box that its catalog offers.'
  static description = `With NAME: that box, limited by --box-version. Without NAME in a project: the boxes of the Boxfile's machines, limited by each machine's box_version (box_url is the catalog when the store remembers none). Without NAME and without a Boxfile: every installed box that came from a catalog. Old versions stay installed (machines may use them); remove them with box prune.`
  static examples = [
    '<%= config.bin %> update',
    '<%= config.bin %> update org/worker',
    '<%= config.bin %> update org/worker --box-version "~> 1.4"',
  ]
  static enableJsonFlag = true

  static args = {
    name: Args.string({description: 'Box name.'}),
  }

  static flags = {
    ...downloadFlags,
    'box-version': Flags.string({description: 'Version constraint for NAME (">= 1.2, < 2", "~> 1.4").'}),
    provider: Flags.string({description: 'Provider for NAME (qemu also takes libvirt boxes).'}),
  }

  public async run() {
    const {COMPATIBLE_BOX_PROVIDERS} = await import('../lib/box/metadata.js')
    const {updateTargets, updateBoxes} = await import('../lib/store/updates.js')
    const {loadBoxfileIfFound} = await import('../lib/boxfile/load.js')
    const {BoxError, ExitCode} = await import('../lib/core/errors.js')
    if (!this.args.name && (this.flags['box-version'] || this.flags.provider)) {
      throw new BoxError('--box-version and --provider need a box NAME', {exitCode: ExitCode.USAGE})
    }
    const targets = this.args.name
      ? [
          {
            name: this.args.name,
            constraint: this.flags['box-version'],
            providers: this.flags.provider
              ? (COMPATIBLE_BOX_PROVIDERS[this.flags.provider] ?? [this.flags.provider])
              : undefined,
          },
        ]
      : await updateTargets({dataDir: this.config.dataDir, machines: (await loadBoxfileIfFound())?.machines})
    if (targets.length === 0) {
      this.log('There are no boxes to update.')
      return []
    }
    const results = await updateBoxes({
      dataDir: this.config.dataDir,
      cacheDir: this.config.cacheDir,
      targets,
      signal: this.signal,
      progress: this.progress(),
      downloadOptions: {caCertFile: this.flags['ca-cert']},
    })
    for (const result of results) {
      if (result.status === 'updated')
        this.log(`Updated ${result.name} (${result.provider}): ${result.from ?? 'none'} → ${result.to}`)
      else if (result.status === 'up-to-date')
        this.log(`${result.name} (${result.provider}) is up to date: ${result.to}`)
      else this.log(`${result.name}: no catalog to update from (it was added from a file or a .box URL)`)
    }
    return results
  }
}
