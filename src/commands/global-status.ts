import {listMachines} from '../lib/store/machine-index.js'
import {providerFor} from '../providers/index.js'
import {BaseCommand} from '../cli/base-command.js'

interface GlobalStatusEntry {
  id: string
  name: string
  provider: string
  state: string
  box: string
  directory: string
}

export default class GlobalStatus extends BaseCommand<typeof GlobalStatus> {
  static summary = 'Every machine on this host, in every project (entries whose folder is gone are pruned).'
  static enableJsonFlag = true

  async run(): Promise<GlobalStatusEntry[]> {
    const machines = await listMachines(this.config.dataDir, {prune: true})
    const entries = await Promise.all(machines.map(async (machine) => ({
      id: machine.id.slice(0, 8),
      name: machine.name,
      provider: machine.provider,
      state: await providerFor(machine.provider, this.config.cacheDir).state({stateDir: machine.stateDir}).catch(() => 'unknown'),
      box: `${machine.box.name} ${machine.box.version}`,
      directory: machine.projectDir,
    })))
    if (!this.jsonEnabled()) {
      if (entries.length === 0) this.log('There are no machines on this host. Create one with: box init BOX && box up')
      for (const e of entries) this.log(`${e.id}  ${e.name.padEnd(12)} ${e.provider.padEnd(8)} ${e.state.padEnd(11)} ${e.box.padEnd(24)} ${e.directory}`)
    }
    return entries
  }
}
