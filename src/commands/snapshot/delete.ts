import {deleteSnapshot, type DeletedSnapshot} from '../../lib/machine/snapshots.js'
import {SnapshotCommand} from '../../cli/snapshot-command.js'

export default class SnapshotDelete extends SnapshotCommand<typeof SnapshotDelete> {
  static summary = 'Delete a snapshot; refused while another snapshot builds on it.'
  static description =
    "The box image is never touched. A snapshot the machine's current disk builds on loses its name and state; its disk layer stays, unnamed, until the disk no longer needs it."
  static enableJsonFlag = true

  async run(): Promise<DeletedSnapshot[]> {
    const {machines, context, snapshot} = await this.snapshotTarget()
    const results: DeletedSnapshot[] = []
    for (const machine of machines) results.push(await deleteSnapshot(context, machine, snapshot))
    if (!this.jsonEnabled())
      for (const d of results)
        this.log(
          `${d.machine}: deleted snapshot "${d.name}"${d.layerKept ? " (its disk layer stays under the machine's disk)" : ''}`,
        )
    return results
  }
}
