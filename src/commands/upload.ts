import {CopyCommand} from '../cli/copy-command.js'

export default class Upload extends CopyCommand {
  static summary = 'Copy a file or folder from this host into a machine (- for stdin).'
  static description =
    "SOURCE is a host path, or - for stdin (then DESTINATION names the guest file). DESTINATION is a guest path, default the login user's home; when it is a folder the copy goes inside it, else the copy takes that name. An existing file is replaced, an existing folder is not. Runs over the machine's ssh master connection as the login user."
  static examples = [
    'box upload ./site /srv',
    'box upload web dist.tar.gz /tmp/',
    'echo hello | box upload - /tmp/hello.txt',
  ]

  protected readonly direction = 'upload'
}
