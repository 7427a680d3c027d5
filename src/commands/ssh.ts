import {Flags} from '@oclif/core'

import {sshSession} from '../lib/machine/ssh-session.js'
import {MachineCommand} from '../cli/machine-command.js'

export default class Ssh extends MachineCommand<typeof Ssh> {
  static summary = 'Open a shell in a machine, or run a command there.'
  static description = `Without a command: an interactive shell with a TTY. With -c (a shell string, as ssh takes it) or words after -- (passed exactly): the command's exit code is box's exit code. Repeated commands reuse one connection (OpenSSH ControlMaster).`
  static examples = ['box ssh', 'box ssh web -- ls -la /srv', 'box ssh -c "systemctl is-active sshd"']
  static flags = {
    command: Flags.string({char: 'c', description: 'Run this shell command instead of an interactive shell.'}),
  }

  async run(): Promise<void> {
    const {machines, context} = await this.project()
    process.exitCode = await sshSession(context, machines, {command: this.flags.command, words: this.guestCommand})
  }
}
