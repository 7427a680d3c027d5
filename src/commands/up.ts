import {Flags} from '@oclif/core'

import {upMachine, type UpResult} from '../lib/machine/up.js'
import {formatDuration} from '../lib/core/progress.js'
import {MachineCommand} from '../cli/machine-command.js'

export default class Up extends MachineCommand<typeof Up> {
  static summary = 'Create and start machines, wait for ssh, run provisioners.'
  static description = `The machine's disk is a linked clone of the box image (nothing is copied). Each boot recreates the root snapshot when the Boxfile's resnap policy is "always" (the default).`
  static enableJsonFlag = true
  static flags = {
    resnap: Flags.boolean({
      allowNo: true,
      description: "Recreate the root snapshot at this boot (--no-resnap keeps the previous boot's changes).",
    }),
    base: Flags.boolean({description: 'Boot the origin root instead of the snapshot, to change the base box itself.'}),
    provision: Flags.boolean({
      allowNo: true,
      description: 'Run provisioners even if they ran before (--no-provision skips them).',
    }),
    'reset-host-key': Flags.boolean({
      description:
        "Forget the ssh host key pinned at the first up and learn the guest's current one (after you changed it yourself).",
    }),
  }

  async run(): Promise<UpResult[]> {
    const {machines, context} = await this.project()
    const results: UpResult[] = []
    for (const machine of machines) {
      const result = await upMachine(context, machine, {
        resnap: this.flags.resnap,
        base: this.flags.base,
        provision: this.flags.provision === undefined ? 'pending' : this.flags.provision ? 'all' : 'none',
        resetHostKey: this.flags['reset-host-key'],
      })
      if (!result.alreadyRunning && !this.jsonEnabled()) {
        this.logToStderr(
          `${machine.name}: ready in ${formatDuration(result.bootMs ?? 0)}; connect with: box ssh${machines.length > 1 ? ` ${machine.name}` : ''}`,
        )
      }
      results.push(result)
    }
    return results
  }
}
