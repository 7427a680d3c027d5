import {machineDir, readRecord} from '../lib/machine/context.js'
import {sshTarget} from '../lib/machine/ssh-session.js'
import {providerFor} from '../providers/index.js'
import {MachineCommand} from '../cli/machine-command.js'

export default class SshConfig extends MachineCommand<typeof SshConfig> {
  static summary = 'Print an OpenSSH config block for machines (for ssh, VS Code Remote-SSH, Ansible).'
  static examples = ['box ssh-config >> ~/.ssh/config']

  async run(): Promise<void> {
    const {machines, context} = await this.project()
    for (const machine of machines) {
      const stateDir = machineDir(context.projectDir, machine.name)
      const record = await readRecord(stateDir)
      if (!record?.sshPort) {
        this.logToStderr(`${machine.name}: not created yet (box up ${machine.name})`)
        continue
      }
      const target = sshTarget(stateDir, record, providerFor(machine.provider, context.cacheDir))
      this.log(
        [
          `Host ${machine.name}`,
          `  HostName ${target.host}`,
          `  Port ${target.port}`,
          `  User ${target.user}`,
          `  IdentityFile ${target.keyFile}`,
          '  IdentitiesOnly yes',
          '  StrictHostKeyChecking no',
          '  UserKnownHostsFile /dev/null',
          '  LogLevel ERROR',
          '',
        ].join('\n'),
      )
    }
  }
}
