import {Flags} from '@oclif/core'

import {BoxError, ExitCode} from '../lib/errors.js'
import {runAttached} from '../lib/exec.js'
import {runningMachineTarget} from '../lib/machine.js'
import {sshArgs} from '../lib/ssh.js'
import {MachineCommand} from '../machine-command.js'

export default class Ssh extends MachineCommand<typeof Ssh> {
  static summary = 'Open a shell in a machine, or run a command there.'
  static description = `Without a command: an interactive shell with a TTY. With -c (a shell string, as ssh takes it) or words after -- (passed exactly): the command's exit code is box's exit code. Repeated commands reuse one connection (OpenSSH ControlMaster).`
  static examples = ['box ssh', 'box ssh web -- ls -la /srv', 'box ssh -c "systemctl is-active sshd"']
  static flags = {
    command: Flags.string({char: 'c', description: 'Run this shell command instead of an interactive shell.'}),
  }

  async run(): Promise<void> {
    const {machines, context} = await this.project()
    if (machines.length !== 1) {
      throw new BoxError(`box ssh needs one machine; this Boxfile has ${machines.map((m) => m.name).join(', ')}`, {exitCode: ExitCode.USAGE, suggestions: [`name one: box ssh ${machines[0]!.name}`]})
    }
    const machine = machines[0]!
    const target = await runningMachineTarget(context, machine)
    const words = this.guestCommand
    const interactive = this.flags.command === undefined && words.length === 0
    const args = sshArgs(target, words, this.flags.command)
    process.exitCode = await runAttached('ssh', interactive ? ['-t', ...args] : args)
  }
}
