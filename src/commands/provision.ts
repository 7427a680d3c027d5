import {runningMachineTarget} from '../lib/machine/ssh-session.js'
import {runProvisioners} from '../lib/machine/provision.js'
import type {MachineOutcome} from '../lib/machine/outcome.js'
import {MachineCommand} from '../cli/machine-command.js'

export default class Provision extends MachineCommand<typeof Provision> {
  static summary = 'Run the provisioners (run: once and always) on running machines.'
  static enableJsonFlag = true

  async run(): Promise<Array<MachineOutcome & {provisioners: number}>> {
    const {machines, context} = await this.project()
    const outcomes: Array<MachineOutcome & {provisioners: number}> = []
    for (const machine of machines) {
      const count = await runProvisioners(context, machine, await runningMachineTarget(context, machine), {
        firstTime: true,
      })
      if (count === 0) this.log(`${machine.name}: no provisioners to run`)
      // runningMachineTarget refused a machine that is not running.
      outcomes.push({
        name: machine.name,
        outcome: count === 0 ? 'nothing-to-run' : 'provisioned',
        state: 'running',
        provisioners: count,
      })
    }
    return outcomes
  }
}
