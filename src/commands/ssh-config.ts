import {sshConfigBlock, sshConfigEntries, type SshConfigEntry} from '../lib/machine/ssh-config.js'
import {MachineCommand} from '../cli/machine-command.js'

export default class SshConfig extends MachineCommand<typeof SshConfig> {
  static summary = 'Print an OpenSSH config block for machines (for ssh, VS Code Remote-SSH, Ansible).'
  static examples = ['box ssh-config >> ~/.ssh/config']
  static enableJsonFlag = true

  async run(): Promise<SshConfigEntry[]> {
    const {machines, context} = await this.project()
    const entries = await sshConfigEntries(context, machines)
    for (const entry of entries) {
      if (entry.ssh) this.log(sshConfigBlock(entry.name, entry.ssh))
      else this.logToStderr(`${entry.name}: not created yet (box up ${entry.name})`)
    }
    return entries
  }
}
