import {pushSnapshot, type SavedSnapshot} from '../../lib/machine/snapshots.js'
import {MachineCommand} from '../../cli/machine-command.js'

export default class SnapshotPush extends MachineCommand<typeof SnapshotPush> {
  static summary = 'Save a snapshot with a generated name, for `box snapshot pop` to go back to.'
  static enableJsonFlag = true

  async run(): Promise<SavedSnapshot[]> {
    const {machines, context} = await this.project()
    const results: SavedSnapshot[] = []
    for (const machine of machines) results.push(await pushSnapshot(context, machine))
    if (!this.jsonEnabled()) for (const saved of results) this.log(`${saved.machine}: pushed snapshot "${saved.name}"`)
    return results
  }
}
