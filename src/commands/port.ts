import {Flags} from '@oclif/core'

import {forwardOf, formatForward, machineForwards, oneMachine, type PortForward} from '../lib/machine/port.js'
import {MachineCommand} from '../cli/machine-command.js'

export default class Port extends MachineCommand<typeof Port> {
  static summary = 'Show the ports forwarded to a running machine (host ip:port → guest port).'
  static description =
    "The forwards in force since the last boot: ssh's and the Boxfile's forwarded_ports, with the host port each one really got (a taken host port moves to the next free one). With --guest N, only the host port forwarded to guest port N, for scripts."
  static examples = ['box port', 'box port web --guest 80', 'curl "http://127.0.0.1:$(box port --guest 80)/"']
  static enableJsonFlag = true
  static flags = {
    guest: Flags.integer({description: 'Print only the host port forwarded to this guest port.', min: 1, max: 65_535}),
  }

  async run(): Promise<PortForward | PortForward[]> {
    const {machines, context} = await this.project()
    const machine = oneMachine(machines, 'port')
    const forwards = await machineForwards(context, machine)
    if (this.flags.guest !== undefined) {
      const forward = forwardOf(forwards, this.flags.guest, machine.name)
      this.log(String(forward.host))
      return forward
    }
    for (const forward of forwards) this.log(formatForward(forward))
    return forwards
  }
}
