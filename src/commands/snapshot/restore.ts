import {restoredLine, restoreSnapshot, type RestoredSnapshot} from '../../lib/machine/snapshots.js'
import {SnapshotCommand} from '../../cli/snapshot-command.js'

export default class SnapshotRestore extends SnapshotCommand<typeof SnapshotRestore> {
  static summary = 'Restore a snapshot: a running one resumes where it was saved, a disk one leaves the machine halted.'
  static description =
    "What the machine's disk holds now is dropped. A resumed guest gets the host's time and fresh randomness, and ssh and forwarded ports on free host ports. A state saved by another QEMU, or for other cpus, memory or devices than the Boxfile now says, is refused."
  static enableJsonFlag = true

  async run(): Promise<RestoredSnapshot[]> {
    const {machines, context, snapshot} = await this.snapshotTarget()
    const results: RestoredSnapshot[] = []
    for (const machine of machines) results.push(await restoreSnapshot(context, machine, snapshot))
    if (!this.jsonEnabled()) for (const restored of results) this.log(restoredLine(restored))
    return results
  }
}
