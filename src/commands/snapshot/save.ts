import {saveSnapshot, type SavedSnapshot} from '../../lib/machine/snapshots.js'
import {SnapshotCommand} from '../../cli/snapshot-command.js'

export default class SnapshotSave extends SnapshotCommand<typeof SnapshotSave> {
  static summary = 'Save a snapshot: the disk of a halted machine, the disk and running state of a running one.'
  static description =
    "A running machine is only paused while its RAM and devices are written; it goes on running. Snapshots live in the machine's state folder (.box/machines/NAME/snapshots) as a chain of qcow2 layers over the box image."
  static enableJsonFlag = true

  async run(): Promise<SavedSnapshot[]> {
    const {machines, context, snapshot} = await this.snapshotTarget()
    const results: SavedSnapshot[] = []
    for (const machine of machines) results.push(await saveSnapshot(context, machine, snapshot))
    if (!this.jsonEnabled())
      for (const saved of results)
        this.log(
          `${saved.machine}: saved snapshot "${saved.name}" (${saved.kind === 'running' ? 'disk and running state' : 'disk'})`,
        )
    return results
  }
}
