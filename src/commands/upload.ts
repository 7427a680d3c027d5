import {Args, Flags} from '@oclif/core'

import {oneMachine} from '../lib/machine/port.js'
import {runningMachineTarget} from '../lib/machine/ssh-session.js'
import {checkUploadSource, upload, transferWords, type TransferResult} from '../lib/machine/transfer.js'
import {loadProjectBoxfile} from '../lib/machine/project.js'
import {MachineCommand} from '../cli/machine-command.js'

export default class Upload extends MachineCommand<typeof Upload> {
  static summary = 'Copy a file or folder from this host into a machine (- for stdin).'
  static description =
    "SOURCE is a host path, or - for stdin (then DESTINATION names the guest file). DESTINATION is a guest path, default the login user's home; when it is a folder the copy goes inside it, else the copy takes that name. An existing file is replaced, an existing folder is not. Runs over the machine's ssh master connection as the login user."
  static examples = [
    'box upload ./site /srv',
    'box upload web dist.tar.gz /tmp/',
    'echo hello | box upload - /tmp/hello.txt',
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
      'upload',
    )
    const {machines, context} = await this.project(words.names)
    const machine = oneMachine(machines, 'upload')
    await checkUploadSource(words.source, words.destination, machine.name)
    const target = await runningMachineTarget(context, machine)
    return upload({
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
