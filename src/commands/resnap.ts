import {haltMachine} from '../lib/machine/halt.js'
import {upMachine, type UpResult} from '../lib/machine/up.js'
import {MachineCommand} from '../cli/machine-command.js'

export default class Resnap extends MachineCommand<typeof Resnap> {
  static summary =
    "Reboot machines with a fresh root snapshot now: everything outside /persistent goes back to the box's state."
  static enableJsonFlag = true

  async run(): Promise<Array<UpResult & {outcome: 'resnapped'}>> {
    const {machines, context} = await this.project()
    const results: Array<UpResult & {outcome: 'resnapped'}> = []
    for (const machine of machines) {
      await haltMachine(context, machine)
      results.push({...(await upMachine(context, machine, {resnap: true})), outcome: 'resnapped'})
    }
    return results
  }
}
