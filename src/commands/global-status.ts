import {globalStatus, type GlobalStatusEntry} from '../lib/machine/global-status.js'
import {BaseCommand} from '../cli/base-command.js'

export default class GlobalStatus extends BaseCommand<typeof GlobalStatus> {
  static summary = 'Every machine on this host, in every project (entries whose folder is gone are pruned).'
  static enableJsonFlag = true

  async run(): Promise<GlobalStatusEntry[]> {
    const entries = await globalStatus({dataDir: this.config.dataDir, cacheDir: this.config.cacheDir})
    if (!this.jsonEnabled()) {
      if (entries.length === 0) this.log('There are no machines on this host. Create one with: box init BOX && box up')
      for (const e of entries)
        this.log(
          `${e.id}  ${e.name.padEnd(12)} ${e.provider.padEnd(8)} ${e.state.padEnd(11)} ${e.box.padEnd(24)} ${e.directory}`,
        )
    }
    return entries
  }
}
