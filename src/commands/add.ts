import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {downloadFlags} from '../cli/download-flags.js'

export default class Add extends BaseCommand<typeof Add> {
  static summary = 'Add a box to the local store.'
  static description = `SOURCE is a .box file or the URL of one (a tar in any dialect GNU tar or bsdtar writes, sparse entries included, plain or compressed with gzip, bzip2, xz or zstd, holding metadata.json and the disk image), or a box catalog (Vagrant's metadata JSON) by URL or path. SOURCE may also be a bare cloud image on this machine (a qcow2, or a raw disk image named .img or .raw; not a file named .box): it is stored as a qemu box that box up configures through cloud-init (a NoCloud seed with the login user, the machine's key and the host name). A catalog can be given alone: its name is used. The box is stored as NAME/VERSION/PROVIDER; for a .box the version comes from --box-version, else metadata.json's box.version, else "0"; for a catalog --box-version is a constraint and the newest matching version is added. Downloads resume where an interrupted one stopped.

The box is stored for every provider this host runs: a Vagrant VirtualBox box (OVF + VMDK) is kept as it is for VirtualBox and converted with qemu-img into a libvirt box (qcow2) for QEMU, box's default provider; a libvirt/qemu box gets a VirtualBox copy (VDI) when VBoxManage is on PATH (otherwise on the first \`box up\` of a VirtualBox machine). --no-convert stores the box only as it is.`
  static examples = [
    '<%= config.bin %> add debian/bookworm ./bookworm.box',
    '<%= config.bin %> add debian-cloud ./debian-12-genericcloud-amd64.qcow2',
    '<%= config.bin %> add worker ./worker.box --box-version 1.2.0 --force',
    '<%= config.bin %> add worker https://example.org/worker.box --checksum 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08',
    '<%= config.bin %> add https://example.org/worker.json --box-version ">= 1.2, < 2"',
    '<%= config.bin %> add https://mirror.internal/worker.json --ca-cert ./internal-ca.pem',
  ]
  static enableJsonFlag = true

  static args = {
    name: Args.string({required: true, description: 'Box name ("worker", "org/name"), or a catalog URL/path alone.'}),
    source: Args.string({description: 'Path or URL of the .box file, or of a catalog.'}),
  }

  static flags = {
    ...downloadFlags,
    'box-version': Flags.string({
      description:
        'For a .box: store it as this version. For a catalog: a version constraint (">= 1.2, < 2", "~> 1.4").',
    }),
    provider: Flags.string({
      description: 'The provider the box must be for (a catalog picks a matching one; qemu also takes libvirt boxes).',
    }),
    checksum: Flags.string({description: "Expected checksum of the .box (overrides the catalog's)."}),
    'checksum-type': Flags.string({
      description: 'Type of --checksum (default: guessed from its length).',
      options: ['md5', 'sha1', 'sha256', 'sha384', 'sha512'],
    }),
    force: Flags.boolean({
      description: 'Replace an installed box of the same name, version and provider (and its converted copies).',
    }),
    convert: Flags.boolean({
      default: true,
      allowNo: true,
      description:
        'Also store a copy converted for the other provider this host runs (--no-convert: only the box as it is).',
    }),
  }

  public async run() {
    const {addBoxFromSource, checksumFromFlags} = await import('../lib/store/add.js')
    const {formatBytes} = await import('../lib/core/progress.js')
    // `box add SOURCE` (a catalog names its box) or `box add NAME SOURCE`.
    const [name, source] =
      this.args.source === undefined ? [undefined, this.args.name] : [this.args.name, this.args.source]
    const {box, converted, catalogUrl} = await addBoxFromSource({
      dataDir: this.config.dataDir,
      cacheDir: this.config.cacheDir,
      name,
      source,
      version: this.flags['box-version'],
      provider: this.flags.provider,
      checksum: checksumFromFlags(this.flags.checksum, this.flags['checksum-type']),
      force: this.flags.force,
      convertFor: this.flags.convert ? undefined : [],
      signal: this.signal,
      progress: this.progress(),
      downloadOptions: {caCertFile: this.flags['ca-cert']},
    })
    this.log(`Added box ${box.name} ${box.version} (${box.provider}), ${formatBytes(box.size)}`)
    for (const copy of converted)
      this.log(
        `Converted it for ${describeProviderOf(copy.provider)}: ${copy.name} ${copy.version} (${copy.provider}), ${formatBytes(copy.size)}`,
      )
    return {...box, converted, catalogUrl}
  }
}

/** The host provider that runs a converted copy, as the user writes it in a Boxfile. */
function describeProviderOf(boxProvider: string): string {
  return boxProvider === 'virtualbox' ? 'VirtualBox (provider: virtualbox)' : 'QEMU (provider: qemu, the default)'
}
