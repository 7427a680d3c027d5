import {BaseCommand} from '../cli/base-command.js'

export default class List extends BaseCommand<typeof List> {
  static summary = 'List the boxes in the local store.'
  static examples = ['<%= config.bin %> list', '<%= config.bin %> list --json']
  static enableJsonFlag = true

  public async run() {
    const {listBoxes} = await import('../lib/store/query.js')
    const boxes = await listBoxes(this.config.dataDir)
    if (boxes.length === 0) {
      this.log('There are no boxes installed. Add one with: box add NAME FILE')
      return boxes
    }
    const {formatBytes} = await import('../lib/core/progress.js')
    const rows = [
      ['NAME', 'VERSION', 'PROVIDER', 'SIZE'],
      ...boxes.map((box) => [box.name, box.version, box.provider, formatBytes(box.size)]),
    ]
    this.logTable(rows)
    return boxes
  }
}
