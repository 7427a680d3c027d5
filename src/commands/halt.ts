import {Flags} from '@oclif/core'

import {haltMachine} from '../lib/machine/halt.js'
import {machineOutcome, type MachineOutcome} from '../lib/machine/outcome.js'
import {MachineCommand} from '../cli/machine-command.js'

export default class Halt extends MachineCommand<typeof Halt> {
  static summary = 'Power machines off: ACPI shutdown, forced after a timeout.'
  static enableJsonFlag = true
  static flags = {
    force: Flags.boolean({char: 'f', description: 'Power off at once, without asking the guest.'}),
    timeout: Flags.integer({description: 'Seconds to wait for the guest to power off before forcing it.', default: 30}),
  }

  async run(): Promise<MachineOutcome[]> {
    const {machines, context} = await this.project()
    const outcomes: MachineOutcome[] = []
    for (const machine of machines) {
      const how = await haltMachine(context, machine, {force: this.flags.force, timeoutMs: this.flags.timeout * 1000})
      this.log(
        how === 'not-running'
          ? `${machine.name}: not running`
          : `${machine.name}: halted${how === 'forced' ? ' (forced)' : ''}`,
      )
      outcomes.push(await machineOutcome(context, machine, how === 'acpi' ? 'halted' : how))
    }
    return outcomes
  }
}
