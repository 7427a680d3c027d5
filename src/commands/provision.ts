import {Flags} from '@oclif/core'

import {runningMachineTarget} from '../lib/machine/ssh-session.js'
import {checkProvisionerNames, runProvisioners} from '../lib/machine/provision.js'
import type {MachineOutcome} from '../lib/machine/outcome.js'
import {MachineCommand} from '../cli/machine-command.js'

export default class Provision extends MachineCommand<typeof Provision> {
  static summary = 'Run the provisioners (run: once and always) on running machines.'
  static description =
    'With --provision-with, only the provisioners of those names run, whatever their run setting: a run: never provisioner runs only so.'
  static enableJsonFlag = true
  static flags = {
    'provision-with': Flags.string({
      multiple: true,
      // Machine names may follow: one value per flag, split at commas.
      multipleNonGreedy: true,
      delimiter: ',',
      description: 'Run only the provisioners of these names (comma-separated, or the flag repeated).',
    }),
  }

  async run(): Promise<Array<MachineOutcome & {provisioners: number}>> {
    const {machines, context} = await this.project()
    const only = this.flags['provision-with']
    if (only) checkProvisionerNames(machines, only)
    const outcomes: Array<MachineOutcome & {provisioners: number}> = []
    for (const machine of machines) {
      const count = await runProvisioners(context, machine, await runningMachineTarget(context, machine), {
        firstTime: true,
        only,
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
