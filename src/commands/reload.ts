import {Flags} from '@oclif/core'

import {haltMachine} from '../lib/machine/halt.js'
import {upMachine, type UpResult} from '../lib/machine/up.js'
import {MachineCommand} from '../cli/machine-command.js'

export default class Reload extends MachineCommand<typeof Reload> {
  static summary = "Halt and start machines again (the Boxfile's resnap policy applies to the new boot)."
  static enableJsonFlag = true
  static flags = {
    provision: Flags.boolean({description: 'Run every provisioner again, not only the run: always ones.'}),
    resnap: Flags.boolean({allowNo: true, description: 'Override the resnap policy for this boot.'}),
  }

  async run(): Promise<Array<UpResult & {outcome: 'reloaded'}>> {
    const {machines, context} = await this.project()
    const results: Array<UpResult & {outcome: 'reloaded'}> = []
    for (const machine of machines) {
      await haltMachine(context, machine)
      results.push({
        ...(await upMachine(context, machine, {
          provision: this.flags.provision ? 'all' : 'pending',
          resnap: this.flags.resnap,
        })),
        outcome: 'reloaded',
      })
    }
    return results
  }
}
