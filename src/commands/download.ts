import {Args, Flags} from '@oclif/core'

import {oneMachine} from '../lib/machine/port.js'
import {runningMachineTarget} from '../lib/machine/ssh-session.js'
import {download, transferWords, type TransferResult} from '../lib/machine/transfer.js'
import {loadProjectBoxfile} from '../lib/machine/project.js'
import {MachineCommand} from '../cli/machine-command.js'

export default class Download extends MachineCommand<typeof Download> {
  static summary = 'Copy a file or folder from a machine to this host (- for stdout).'
  static description =
    "SOURCE is a guest path. DESTINATION is a host path, default the current folder; when it is a folder the copy goes inside it, else the copy takes that name; - writes a file's bytes to stdout. Every entry of the stream is checked before anything is written: nothing lands outside DESTINATION, and box never writes through a symlink."
  static examples = [
    'box download /var/log/syslog .',
    'box download web /srv/data ./backup',
    'box download /etc/os-release - | head -2',
  ]
  static usage = '<%= command.id %> [NAME] SOURCE [DESTINATION] [--compress] [--json]'
  static strict = true
  static enableJsonFlag = true
  static args = {
    names: Args.string({description: 'Machine name from the Boxfile (needed when it has several).', required: false}),
    source: Args.string({description: 'What to copy.', required: false}),
    destination: Args.string({description: 'Where the copy goes.', required: false}),
  }
  static flags = {
    compress: Flags.boolean({description: 'gzip the stream (for slow links; the guest needs gzip).', default: false}),
  }

  async run(): Promise<TransferResult> {
    const {machines: all} = await loadProjectBoxfile({version: this.config.version})
    const words = transferWords(
      this.positionals,
      all.map((m) => m.name),
      'download',
    )
    const {machines, context} = await this.project(words.names)
    const machine = oneMachine(machines, 'download')
    const target = await runningMachineTarget(context, machine)
    return download({
      machine: machine.name,
      target,
      source: words.source,
      destination: words.destination,
      compress: this.flags.compress,
      progress: context.progress,
      signal: context.signal,
    })
  }
}
