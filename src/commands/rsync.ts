import {runningMachineTarget} from '../lib/machine/ssh-session.js'
import {syncFolders} from '../lib/machine/sync.js'
import type {MachineOutcome} from '../lib/machine/outcome.js'
import {MachineCommand} from '../cli/machine-command.js'

export default class Rsync extends MachineCommand<typeof Rsync> {
  static summary = 'Copy the synced folders of running machines into them again (rsync over ssh).'
  static enableJsonFlag = true

  async run(): Promise<Array<MachineOutcome & {folders: number}>> {
    const {machines, context} = await this.project()
    const outcomes: Array<MachineOutcome & {folders: number}> = []
    for (const machine of machines) {
      const count = await syncFolders(machine, await runningMachineTarget(context, machine), {
        progress: context.progress,
        signal: context.signal,
      })
      if (count === 0) this.log(`${machine.name}: no synced folders`)
      // runningMachineTarget refused a machine that is not running.
      outcomes.push({
        name: machine.name,
        outcome: count === 0 ? 'no-synced-folders' : 'synced',
        state: 'running',
        folders: count,
      })
    }
    return outcomes
  }
}
