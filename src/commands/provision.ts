import {runningMachineTarget} from '../lib/machine/ssh-session.js'
import {runProvisioners} from '../lib/machine/provision.js'
import {MachineCommand} from '../cli/machine-command.js'

export default class Provision extends MachineCommand<typeof Provision> {
  static summary = 'Run the provisioners (run: once and always) on running machines.'

  async run(): Promise<void> {
    const {machines, context} = await this.project()
    for (const machine of machines) {
      const count = await runProvisioners(context, machine, await runningMachineTarget(context, machine), {firstTime: true})
      if (count === 0) this.log(`${machine.name}: no provisioners to run`)
    }
  }
}
