import {runningMachineTarget} from '../lib/machine/ssh-session.js'
import {syncFolders} from '../lib/machine/sync.js'
import {MachineCommand} from '../cli/machine-command.js'

export default class Rsync extends MachineCommand<typeof Rsync> {
  static summary = 'Copy the synced folders of running machines into them again (rsync over ssh).'

  async run(): Promise<void> {
    const {machines, context} = await this.project()
    for (const machine of machines) {
      const count = await syncFolders(machine, await runningMachineTarget(context, machine), {progress: context.progress, signal: context.signal})
      if (count === 0) this.log(`${machine.name}: no synced folders`)
    }
  }
}
