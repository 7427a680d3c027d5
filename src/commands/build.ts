import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'

export default class Build extends BaseCommand<typeof Build> {
  static summary = 'Build a .box from a recipe (e.g. boxes/debian-bookworm).'
  static description = `Builds a Vagrant-format box (libvirt provider, qcow2) with box's resnap layout: a /boot partition and an LVM volume group holding root, root_snap (a snapshot of root, recreated at every resnap boot), persistent and swap.

Stages: rootfs (debootstrap, cached by suite, mirror and packages), configure (on the host, in a chroot), images (mke2fs -d), disk (a builder VM under QEMU lays out LVM and installs grub), package (zstd tar with sha256). Needs root for debootstrap and chroot.`
  static examples = [
    '<%= config.bin %> build boxes/debian-bookworm',
    '<%= config.bin %> build boxes/debian-bookworm --output worker.box --mirror http://ftp.de.debian.org/debian',
  ]
  static enableJsonFlag = true

  static args = {
    recipe: Args.string({required: true, description: 'Recipe directory holding recipe.yaml.'}),
  }

  static flags = {
    output: Flags.string({char: 'o', description: 'The .box file to write (default: ./<name>-<version>.box).'}),
    mirror: Flags.string({
      description: "Debian mirror (default: the recipe's, else the host's apt source, else deb.debian.org).",
    }),
    force: Flags.boolean({description: 'Replace the output file if it exists.'}),
  }

  public async run() {
    const {buildBox} = await import('../builder/index.js')
    const {formatBytes, formatDuration} = await import('../lib/core/progress.js')
    const result = await buildBox({
      recipeDir: this.args.recipe,
      output: this.flags.output,
      cacheDir: this.config.cacheDir,
      mirror: this.flags.mirror,
      force: this.flags.force,
      progress: this.progress(),
      signal: this.signal,
    })
    const total = result.timings.reduce((sum, timing) => sum + timing.ms, 0)
    this.log(`${result.output}`)
    this.log(`sha256 ${result.sha256}  ${formatBytes(result.size)}, built in ${formatDuration(total)}`)
    return result
  }
}
