import {Flags} from '@oclif/core'

import {BoxError, ExitCode} from '../lib/core/errors.js'
import {destroyMachine} from '../lib/machine/destroy.js'
import {machineOutcome, type MachineOutcome} from '../lib/machine/outcome.js'
import {MachineCommand} from '../cli/machine-command.js'

export default class Destroy extends MachineCommand<typeof Destroy> {
  static summary = 'Stop machines and delete their disks and state.'
  static enableJsonFlag = true
  static flags = {
    force: Flags.boolean({char: 'f', description: 'Do not ask for confirmation.'}),
  }

  async run(): Promise<MachineOutcome[]> {
    const {machines, context} = await this.project()
    const outcomes: MachineOutcome[] = []
    for (const machine of machines) {
      if (!this.flags.force) {
        if (!process.stdin.isTTY) {
          throw new BoxError(`destroying ${machine.name} needs confirmation, and there is no terminal to ask on`, {
            exitCode: ExitCode.USAGE,
            suggestions: ['pass -f to destroy without asking'],
          })
        }
        const {confirm} = await import('@inquirer/prompts')
        if (
          !(await confirm({
            message: `Destroy machine ${machine.name}? Its disk and everything written to it will be deleted.`,
            default: false,
          }))
        ) {
          this.log(`${machine.name}: kept`)
          outcomes.push(await machineOutcome(context, machine, 'kept'))
          continue
        }
      }
      const existed = await destroyMachine(context, machine)
      this.log(existed ? `${machine.name}: destroyed` : `${machine.name}: not created`)
      outcomes.push({name: machine.name, outcome: existed ? 'destroyed' : 'not-created', state: 'not_created'})
    }
    return outcomes
  }
}
