import {BaseCommand} from '../cli/base-command.js'
import {loadBoxfile} from '../lib/boxfile/load.js'

export default class Validate extends BaseCommand<typeof Validate> {
  static summary = 'Check the Boxfile and list its machines.'
  static description =
    'Every problem is shown as file:line:col: field: what is wrong. Exit code 2 when the Boxfile is invalid or missing.'
  static examples = ['<%= config.bin %> validate', '<%= config.bin %> validate --json']
  static enableJsonFlag = true

  async run() {
    const boxfile = await loadBoxfile()
    const names = boxfile.machines.map((machine) => machine.name)
    this.log(`Boxfile is valid: ${names.length} machine(s): ${names.join(', ')}`)
    return {valid: true, file: boxfile.file, machines: boxfile.machines}
  }
}
