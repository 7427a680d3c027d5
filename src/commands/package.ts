import {Args, Flags} from '@oclif/core'

import {BoxError, ExitCode} from '../lib/core/errors.js'
import {packageMachine, type PackageResult} from '../lib/machine/package.js'
import {formatBytes, formatDuration} from '../lib/core/progress.js'
import {MachineCommand} from '../cli/machine-command.js'

export default class Package extends MachineCommand<typeof Package> {
  static summary = "Package a halted machine's disk as a new .box (Vagrant-compatible)."
  static description = `The machine's disk and its box are flattened into one standalone, compacted qcow2: blocks the guest trimmed and the root snapshot's copy-on-write area are not shipped, so what ships is the origin. To change the origin, boot it with \`box up --base\`, change it, then \`box package --halt\` (which trims the filesystems first). metadata.json keeps the source box's boot and LVM settings with the new version; the kernel and initrd for direct boot are taken from the image's /boot. With --catalog, the version's entry in a Vagrant-format catalog is added or updated: publishing is copying the .box and the catalog to a web server.`
  static examples = [
    '<%= config.bin %> up --base && <%= config.bin %> ssh -c "sudo apt-get -y upgrade" && <%= config.bin %> package --halt',
    '<%= config.bin %> package worker --output worker-1.3.0.box --version 1.3.0 --catalog worker.json --url https://example.org/boxes/worker-1.3.0.box',
  ]
  static enableJsonFlag = true
  static args = {
    names: Args.string({description: "The machine to package (default: the Boxfile's only machine).", required: false}),
  }

  static flags = {
    output: Flags.string({char: 'o', description: 'The .box to write (default: ./<box>-<version>.box).'}),
    include: Flags.string({multiple: true, description: 'A file to ship in the box under include/ (repeatable).'}),
    info: Flags.string({description: 'A JSON file shipped as info.json (shown by `vagrant box list -i`).'}),
    compression: Flags.string({
      options: ['zstd', 'gzip'],
      default: 'zstd',
      description: 'zstd (multi-threaded, smaller, faster) or gzip (for tools that only read gzip).',
    }),
    version: Flags.string({
      description: "Version of the new box (default: the source box's with its last number + 1).",
    }),
    halt: Flags.boolean({description: 'Trim the filesystems and halt the machine first if it is running.'}),
    force: Flags.boolean({char: 'f', description: 'Replace an existing output file.'}),
    catalog: Flags.string({
      description: 'Add or update this version in a Vagrant-format catalog JSON (created if missing).',
      dependsOn: ['url'],
    }),
    url: Flags.string({
      description: 'With --catalog: the URL the .box will be downloaded from.',
      dependsOn: ['catalog'],
    }),
    'box-name': Flags.string({
      description: "With --catalog: the box name a new catalog gets (default: the source box's name).",
      dependsOn: ['catalog'],
    }),
  }

  async run(): Promise<PackageResult> {
    const {machines, context} = await this.project()
    if (machines.length !== 1) {
      throw new BoxError(
        `package works on one machine; name one of: ${machines.map((machine) => machine.name).join(', ')}`,
        {exitCode: ExitCode.USAGE},
      )
    }
    const result = await packageMachine({
      context,
      machine: machines[0]!,
      output: this.flags.output,
      include: this.flags.include,
      info: this.flags.info,
      compression: this.flags.compression as 'zstd' | 'gzip',
      version: this.flags.version,
      halt: this.flags.halt,
      force: this.flags.force,
      catalog: this.flags.catalog
        ? {file: this.flags.catalog, url: this.flags.url!, boxName: this.flags['box-name']}
        : undefined,
    })
    this.log(
      `Packaged ${result.output} (${result.source.name} ${result.version}), ${formatBytes(result.size)} in ${formatDuration(result.ms)}`,
    )
    this.log(`sha256 ${result.sha256}`)
    if (result.catalog) this.log(`Catalog ${result.catalog} lists ${result.version}`)
    return result
  }
}
