import {BoxError} from '../lib/errors.js'
import {machineDir, providerFor, readRecord, sshTarget} from '../lib/machine.js'
import {syncFolders} from '../lib/sync.js'
import {MachineCommand} from '../machine-command.js'

export default class Rsync extends MachineCommand<typeof Rsync> {
  static summary = 'Copy the synced folders of running machines into them again (rsync over ssh).'

  async run(): Promise<void> {
    const {machines, context} = await this.project()
    for (const machine of machines) {
      const stateDir = machineDir(context.projectDir, machine.name)
      const provider = providerFor(machine.provider, context.cacheDir)
      const record = await readRecord(stateDir)
      if (!record || (await provider.state({stateDir})) !== 'running') {
        throw new BoxError(`machine ${machine.name} is not running`, {suggestions: [`start it: box up ${machine.name}`]})
      }
      const count = await syncFolders(machine, sshTarget(stateDir, record, provider), {progress: context.progress, signal: context.signal})
      if (count === 0) this.log(`${machine.name}: no synced folders`)
    }
  }
}
