import {CopyCommand} from '../cli/copy-command.js'

export default class Download extends CopyCommand {
  static summary = 'Copy a file or folder from a machine to this host (- for stdout).'
  static description =
    "SOURCE is a guest path. DESTINATION is a host path, default the current folder; when it is a folder the copy goes inside it, else the copy takes that name; - writes a file's bytes to stdout. Every entry of the stream is checked before anything is written: nothing lands outside DESTINATION, and box never writes through a symlink."
  static examples = [
    'box download /var/log/syslog .',
    'box download web /srv/data ./backup',
    'box download /etc/os-release - | head -2',
  ]

  protected readonly direction = 'download'
}
