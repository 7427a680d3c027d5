import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'

export default class Prune extends BaseCommand<typeof Prune> {
  static summary = 'Remove old box versions.'
  static description =
    'Keeps the newest version of each box (per host provider: qemu and libvirt boxes count as one, both run under QEMU) and every version a machine on this host is backed by (see box global-status); removes the rest.'
  static examples = [
    '<%= config.bin %> prune --dry-run',
    '<%= config.bin %> prune',
    '<%= config.bin %> prune org/worker',
  ]
  static enableJsonFlag = true

  static args = {
    name: Args.string({description: 'Only versions of this box.'}),
  }

  static flags = {
    'dry-run': Flags.boolean({description: 'Only show what would be removed.'}),
  }

  public async run() {
    const {pruneBoxes} = await import('../lib/store/prune.js')
    const {formatBytes} = await import('../lib/core/progress.js')
    const dryRun = this.flags['dry-run'] === true
    const result = await pruneBoxes({dataDir: this.config.dataDir, name: this.args.name, dryRun})
    const describe = (box: {name: string; version: string; provider: string}) =>
      `${box.name} ${box.version} (${box.provider})`
    for (const kept of result.keep) {
      const why = [
        kept.newest ? 'newest' : undefined,
        ...kept.usedBy.map((machine) => `used by ${machine.name} in ${machine.projectDir}`),
      ].filter(Boolean)
      this.log(`keep    ${describe(kept.box)}: ${why.join(', ')}`)
    }
    const removed = dryRun ? result.remove : result.removed
    for (const box of removed)
      this.log(`${dryRun ? 'would remove' : 'removed'} ${describe(box)}, ${formatBytes(box.size)}`)
    for (const {box, error} of result.failed) this.warn(`kept ${describe(box)}: ${error}`)
    const freed = removed.reduce((sum, box) => sum + box.size, 0)
    this.log(
      removed.length === 0
        ? 'Nothing to prune.'
        : `${dryRun ? 'Would free' : 'Freed'} ${formatBytes(freed)} (${removed.length} box${removed.length === 1 ? '' : 'es'}).`,
    )
    return {dryRun, keep: result.keep, remove: removed, failed: result.failed}
  }
}
