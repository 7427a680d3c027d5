import {BoxError} from '../lib/errors.js'
import {machineDir, providerFor, readRecord, sshTarget} from '../lib/machine.js'
import {runProvisioners} from '../lib/provision.js'
import {MachineCommand} from '../machine-command.js'

export default class Provision extends MachineCommand<typeof Provision> {
  static summary = 'Run the provisioners (run: once and always) on running machines.'

  async run(): Promise<void> {
    const {machines, context} = await this.project()
    for (const machine of machines) {
      const stateDir = machineDir(context.projectDir, machine.name)
      const provider = providerFor(machine.provider, context.cacheDir)
      const record = await readRecord(stateDir)
      if (!record || (await provider.state({stateDir})) !== 'running') {
        throw new BoxError(`machine ${machine.name} is not running`, {suggestions: [`start it: box up ${machine.name}`]})
      }
      const count = await runProvisioners(context, machine, sshTarget(stateDir, record, provider), {firstTime: true})
      if (count === 0) this.log(`${machine.name}: no provisioners to run`)
    }
  }
}
