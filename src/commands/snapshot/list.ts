import {formatBytes} from '../../lib/core/progress.js'
import {listSnapshots, type MachineSnapshots} from '../../lib/machine/snapshots.js'
import {MachineCommand} from '../../cli/machine-command.js'

export default class SnapshotList extends MachineCommand<typeof SnapshotList> {
  static summary = 'List the snapshots of machines.'
  static enableJsonFlag = true

  async run(): Promise<MachineSnapshots[]> {
    const {machines, context} = await this.project()
    const results: MachineSnapshots[] = []
    for (const machine of machines) results.push(await listSnapshots(context, machine))
    if (this.jsonEnabled()) return results
    for (const {machine, snapshots} of results) {
      if (snapshots.length === 0) this.log(`${machine}: no snapshots`)
      for (const s of snapshots) {
        const size = [
          s.diskBytes === undefined ? undefined : `disk ${formatBytes(s.diskBytes)}`,
          s.stateBytes === undefined ? undefined : `state ${formatBytes(s.stateBytes)}`,
        ]
          .filter(Boolean)
          .join(', ')
        this.log(
          `${machine}: ${s.name}${s.current ? ' (current)' : ''}  ${s.kind}  ${s.createdAt}${s.parent ? `  on ${s.parent}` : ''}${size ? `  ${size}` : ''}`,
        )
      }
    }
    return results
  }
}
