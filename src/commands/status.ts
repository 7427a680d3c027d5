import {machineStatus, type MachineStatus} from '../lib/machine.js'
import {MachineCommand} from '../machine-command.js'

export default class Status extends MachineCommand<typeof Status> {
  static summary = 'State of the Boxfile\'s machines: not_created, running, poweroff or aborted.'
  static enableJsonFlag = true

  async run(): Promise<MachineStatus[]> {
    const {machines, context} = await this.project()
    const statuses = await Promise.all(machines.map((machine) => machineStatus(context, machine)))
    if (!this.jsonEnabled()) {
      for (const status of statuses) {
        const ports = status.forwardedPorts.map((p) => `${p.hostIp}:${p.host}→${p.guest}/${p.protocol}`)
        const parts = [status.state, status.ssh && status.state === 'running' ? `ssh ${status.ssh}` : undefined, ports.length > 0 ? `ports ${ports.join(', ')}` : undefined, status.snapshotUsedPercent === undefined ? undefined : `root snapshot ${status.snapshotUsedPercent.toFixed(1)}% used`]
        this.log(`${status.name.padEnd(16)} ${parts.filter(Boolean).join('  ')}`)
        if (status.warning) this.logToStderr(`warning: ${status.name}: ${status.warning}`)
      }
    }
    return statuses
  }
}
