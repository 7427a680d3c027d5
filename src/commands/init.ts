import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {BOXFILE_ENV, BOXFILE_NAME} from '../lib/boxfile/find.js'
import {writeNewBoxfile} from '../lib/boxfile/init.js'
import {DEFAULT_INIT_BOX} from '../lib/boxfile/types.js'
import {BoxError, ExitCode} from '../lib/core/errors.js'
import {Asker, mayAsk} from '../cli/prompts.js'

export default class Init extends BaseCommand<typeof Init> {
  static summary = 'Write a commented Boxfile into the current directory.'
  static description = `Every field is written with a comment and the worker defaults (qemu, 2 CPUs, 1024 MiB, resnap always). An existing Boxfile is kept unless --force. ${BOXFILE_ENV} names another file to write.`
  static enableJsonFlag = true
  static examples = [
    '<%= config.bin %> init',
    '<%= config.bin %> init debian-bookworm --box-url https://example.org/boxes/debian-bookworm.json',
    '<%= config.bin %> init my-box --minimal',
  ]

  static args = {
    box: Args.string({description: `name of the box in the store (asked on a terminal; default: ${DEFAULT_INIT_BOX})`}),
  }

  static flags = {
    'box-url': Flags.string({description: 'URL or path of the .box or catalog JSON to get the box from'}),
    force: Flags.boolean({char: 'f', description: 'overwrite an existing Boxfile'}),
    minimal: Flags.boolean({char: 'm', description: 'only the box lines, without the commented reference'}),
    yes: Flags.boolean({char: 'y', description: `ask nothing: the box defaults to ${DEFAULT_INIT_BOX}`}),
  }

  async run(): Promise<{file: string; box: string; boxUrl?: string}> {
    if (this.flags['box-url'] !== undefined && this.args.box === undefined) {
      throw new BoxError('--box-url needs a BOX name: box init NAME --box-url URL', {exitCode: ExitCode.USAGE})
    }
    // A question on stdout would corrupt the JSON document.
    const box = await new Asker(mayAsk(this.flags.yes) && !this.jsonEnabled()).answer({
      flagName: 'BOX',
      flag: this.args.box,
      ask: (prompts) => prompts.input({message: 'Box name (from box list)?', default: DEFAULT_INIT_BOX}),
      default: DEFAULT_INIT_BOX,
      what: 'box',
      example: DEFAULT_INIT_BOX,
    })
    const file = await writeNewBoxfile(process.env[BOXFILE_ENV] || BOXFILE_NAME, {
      box,
      boxUrl: this.flags['box-url'],
      minimal: this.flags.minimal,
      force: this.flags.force,
    })
    this.log(`Wrote ${file}. Check it with: box validate; start it with: box up`)
    return {file, box, ...(this.flags['box-url'] === undefined ? {} : {boxUrl: this.flags['box-url']})}
  }
}
