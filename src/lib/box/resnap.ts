import type {BoxInfo, LvmLayout} from './metadata.js'

/** device-mapper doubles every dash inside VG and LV names: vg "my-vg", lv "root" → my--vg-root. */
export function mapperName(vg: string, lv: string): string {
  return `${vg.replaceAll('-', '--')}-${lv.replaceAll('-', '--')}`
}

export function mapperPath(vg: string, lv: string): string {
  return `/dev/mapper/${mapperName(vg, lv)}`
}

export interface BootChoice {
  /** Recreate the snapshot from the origin at this boot. */
  resnap: boolean
  /** Boot the origin itself (maintainers changing the base box). */
  base?: boolean
}

/**
 * The kernel command line of a resnap box, as grub and direct kernel boot both use it:
 * `root=/dev/mapper/<vg>-root_snap ro volgroup=<vg> lvroot=root lvsnap=root_snap lvsize=<size> [resnap]`,
 * with `lvpool=<pool>` in place of `lvsize=` for a thin snapshot (it has no size).
 * With `base`, root is the origin and no snapshot is touched.
 */
export function kernelCommandLine(lvm: LvmLayout, choice: BootChoice, extraArgs = ''): string {
  const root = mapperPath(lvm.vg, choice.base ? lvm.root : lvm.snapshot)
  const args = [
    `root=${root}`,
    'ro',
    `volgroup=${lvm.vg}`,
    `lvroot=${lvm.root}`,
    `lvsnap=${lvm.snapshot}`,
    lvm.pool ? `lvpool=${lvm.pool}` : `lvsize=${lvm.snapshot_size}`,
  ]
  if (choice.resnap && !choice.base) args.push('resnap')
  if (extraArgs.trim()) args.push(extraArgs.trim())
  return args.join(' ')
}

export function bootCommandLine(info: BoxInfo, choice: BootChoice): string | undefined {
  return info.lvm ? kernelCommandLine(info.lvm, choice, info.kernel_args) : undefined
}
