import {machineStatus, printStatuses, type MachineStatus} from '../lib/machine/status.js'
import {MachineCommand} from '../cli/machine-command.js'

export default class Status extends MachineCommand<typeof Status> {
  static summary = "State of the Boxfile's machines: not_created, running, poweroff or aborted."
  static description =
    'For a running machine also its ssh and forwarded ports and how full its root snapshot is (a warning above 80 %).'
  static enableJsonFlag = true

  async run(): Promise<MachineStatus[]> {
    const {machines, context} = await this.project()
    const statuses = await Promise.all(machines.map((machine) => machineStatus(context, machine)))
    if (!this.jsonEnabled())
      printStatuses(
        statuses,
        (line) => this.log(line),
        (line) => this.logToStderr(line),
      )
    return statuses
  }
}
