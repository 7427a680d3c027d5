import {haltMachine} from '../lib/machine/halt.js'
import {upMachine} from '../lib/machine/up.js'
import {MachineCommand} from '../cli/machine-command.js'

export default class Resnap extends MachineCommand<typeof Resnap> {
  static summary = 'Reboot machines with a fresh root snapshot now: everything outside /persistent goes back to the box\'s state.'

  async run(): Promise<void> {
    const {machines, context} = await this.project()
    for (const machine of machines) {
      await haltMachine(context, machine)
      await upMachine(context, machine, {resnap: true})
    }
  }
}
