import {popSnapshot, type RestoredSnapshot} from '../../lib/machine/snapshots.js'
import {MachineCommand} from '../../cli/machine-command.js'

export default class SnapshotPop extends MachineCommand<typeof SnapshotPop> {
  static summary = 'Restore the last pushed snapshot and delete it.'
  static enableJsonFlag = true

  async run(): Promise<RestoredSnapshot[]> {
    const {machines, context} = await this.project()
    const results: RestoredSnapshot[] = []
    for (const machine of machines) results.push(await popSnapshot(context, machine))
    if (!this.jsonEnabled())
      for (const r of results)
        this.log(
          `${r.machine}: popped snapshot "${r.name}"${r.running ? `, running (ssh on 127.0.0.1:${r.sshPort})` : ', halted'}`,
        )
    return results
  }
}
