/** `box global-status`: every machine of the machine index, in every project, with its state now. */
import {providerFor} from '../../providers/index.js'
import {listMachines} from '../store/machine-index.js'

export interface GlobalStatusEntry {
  id: string
  name: string
  provider: string
  state: string
  box: string
  directory: string
}

/** Entries whose project folder is gone are pruned from the index; a state that cannot be read is "unknown". */
export async function globalStatus(options: {dataDir: string; cacheDir: string}): Promise<GlobalStatusEntry[]> {
  const machines = await listMachines(options.dataDir, {prune: true})
  return Promise.all(
    machines.map(async (machine) => ({
      id: machine.id.slice(0, 8),
      name: machine.name,
      provider: machine.provider,
      state: await providerFor(machine.provider, options.cacheDir)
        .state({stateDir: machine.stateDir})
        .catch(() => 'unknown'),
      box: `${machine.box.name} ${machine.box.version}`,
      directory: machine.projectDir,
    })),
  )
}
