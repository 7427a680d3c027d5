/**
 * Plain Debian disk images for tests, made from Debian packages on the host without
 * mounts or loop devices: debootstrap into a folder, configure it in a chroot (the
 * caller's script), `mke2fs -d` for the root filesystem, an MBR partition table written
 * by sfdisk into a sparse file, and GRUB for BIOS put where `grub-install` puts it: the
 * image's own boot.img in the first sector and a core.img made by the image's own
 * grub-mkimage in the gap before the first partition. Nothing of box goes in.
 *
 * The caller decides what the guest is (a Vagrant base box, later a cloud image), through
 * its packages and its configure script; this module only assembles a bootable disk.
 */
import {createHash, randomUUID} from 'node:crypto'
import {existsSync} from 'node:fs'
import {mkdir, open, readdir, readFile, rename, rm, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {execa} from 'execa'

/** What every such image needs besides the caller's packages: a kernel, its initramfs, systemd and BIOS GRUB. */
export const BASE_PACKAGES = [
  'systemd-sysv',
  'udev',
  'kmod',
  'initramfs-tools',
  'linux-image-cloud-amd64',
  'grub-pc',
  'iproute2',
  'ca-certificates',
]

/** The first partition starts at 1 MiB, as partitioning tools put it: the gap before it holds GRUB's core.img. */
const PARTITION_START_SECTOR = 2048
const SECTOR = 512
/** boot.img's code ends where the MBR's partition table starts (the disk signature at 440 is ours to keep too). */
const MBR_CODE_BYTES = 440

export interface DebianImageSpec {
  suite: string
  mirror: string
  /** Packages besides BASE_PACKAGES. */
  packages: readonly string[]
  /** A shell script run as root in the chroot (sh -eu), the root filesystem's UUID in $ROOT_UUID. */
  configure: string
  /** Kernel command line after root=… (console, net.ifnames=0, …). */
  kernelArgs: string
  diskBytes: number
}

/** Key for a cache of what `spec` builds: the same inputs give the same image. */
export function imageSpecHash(spec: DebianImageSpec, extra: readonly string[] = []): string {
  const hash = createHash('sha256')
  hash.update(JSON.stringify({...spec, packages: [...BASE_PACKAGES, ...spec.packages].sort()}))
  for (const part of extra) hash.update(`\0${part}`)
  return hash.digest('hex').slice(0, 16)
}

/** The host's Debian mirror (as apt uses it), else deb.debian.org. */
export async function hostDebianMirror(): Promise<string> {
  const {defaultMirror} = await import('../../src/builder/rootfs.js')
  return defaultMirror()
}

/** A debootstrapped tree, cached under cacheDir/debootstrap/<hash> (suite, mirror, packages) and copied for each use. */
async function debootstrapTree(spec: DebianImageSpec, cacheDir: string, dest: string): Promise<void> {
  const packages = [...new Set([...BASE_PACKAGES, ...spec.packages])].sort()
  const key = createHash('sha256')
    .update(JSON.stringify([spec.suite, spec.mirror, packages]))
    .digest('hex')
    .slice(0, 16)
  const cached = join(cacheDir, 'debootstrap', key)
  if (!existsSync(join(cached, 'etc', 'os-release'))) {
    await mkdir(join(cacheDir, 'debootstrap'), {recursive: true})
    const temp = `${cached}.tmp-${process.pid}`
    await rm(temp, {recursive: true, force: true})
    await execa(
      'debootstrap',
      ['--variant=minbase', `--include=${packages.join(',')}`, '--components=main', spec.suite, temp, spec.mirror],
      {
        env: {DEBIAN_FRONTEND: 'noninteractive', LC_ALL: 'C'},
        stdin: 'ignore',
      },
    )
    await rename(temp, cached)
  }
  await rm(dest, {recursive: true, force: true})
  await execa('cp', ['-a', '--reflink=auto', cached, dest])
}

/** The only kernel in /boot (a fixture installs exactly one). */
async function kernelVersion(root: string): Promise<string> {
  const names = await readdir(join(root, 'boot'))
  const versions = names.filter((name) => name.startsWith('vmlinuz-')).map((name) => name.slice('vmlinuz-'.length))
  const version = versions.find((candidate) => names.includes(`initrd.img-${candidate}`))
  if (versions.length !== 1 || !version)
    throw new Error(`expected one kernel with its initrd in ${root}/boot, found: ${names.join(' ')}`)
  return version
}

/**
 * grub.cfg as Debian's update-grub would write it for this one kernel (update-grub itself
 * needs to probe the root device, which a chroot on the host does not have).
 */
export function grubConfig(options: {rootUuid: string; kernelVersion: string; kernelArgs: string}): string {
  const {rootUuid, kernelVersion: version, kernelArgs} = options
  return `# Written for this test image as update-grub writes it (one kernel).
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set default=0
set timeout=1
insmod part_msdos
insmod ext2
search --no-floppy --fs-uuid --set=root ${rootUuid}
menuentry 'Debian GNU/Linux' {
  linux /boot/vmlinuz-${version} root=UUID=${rootUuid} ro ${kernelArgs}
  initrd /boot/initrd.img-${version}
}
`
}

export interface BuiltImage {
  /** Raw, sparse disk image. */
  raw: string
  kernelVersion: string
}

/** Build the disk described by `spec` into workDir/disk.raw. Needs root for debootstrap and chroot only. */
export async function buildDebianImage(
  spec: DebianImageSpec,
  options: {cacheDir: string; workDir: string},
): Promise<BuiltImage> {
  const {cacheDir, workDir} = options
  await mkdir(workDir, {recursive: true})
  const root = join(workDir, 'root')
  await debootstrapTree(spec, cacheDir, root)

  const rootUuid = randomUUID()
  await execa('chroot', [root, 'sh', '-eu'], {
    input: spec.configure,
    env: {ROOT_UUID: rootUuid, DEBIAN_FRONTEND: 'noninteractive', LC_ALL: 'C', PATH: '/usr/sbin:/usr/bin:/sbin:/bin'},
  })
  const version = await kernelVersion(root)
  await mkdir(join(root, 'boot', 'grub'), {recursive: true})
  await writeFile(
    join(root, 'boot', 'grub', 'grub.cfg'),
    grubConfig({rootUuid, kernelVersion: version, kernelArgs: spec.kernelArgs}),
  )
  // The modules where grub-install puts them: core.img loads normal.mod and the others from its prefix.
  await execa('chroot', [
    root,
    'sh',
    '-euc',
    'mkdir -p /boot/grub/i386-pc && cp /usr/lib/grub/i386-pc/*.mod /usr/lib/grub/i386-pc/*.lst /boot/grub/i386-pc/',
  ])
  // core.img by the image's own grub-mkimage: it finds /boot/grub on the first partition of the BIOS boot disk.
  await execa('chroot', [
    root,
    'grub-mkimage',
    '-O',
    'i386-pc',
    '-o',
    '/tmp/core.img',
    '-p',
    '(hd0,msdos1)/boot/grub',
    'biosdisk',
    'part_msdos',
    'ext2',
    'search_fs_uuid',
  ])
  const coreImg = await readFile(join(root, 'tmp', 'core.img'))
  const bootImg = await readFile(join(root, 'usr', 'lib', 'grub', 'i386-pc', 'boot.img'))
  await rm(join(root, 'tmp', 'core.img'))
  if (coreImg.length > (PARTITION_START_SECTOR - 1) * SECTOR)
    throw new Error(`core.img (${coreImg.length} bytes) does not fit before the first partition`)

  const partitionBytes = spec.diskBytes - PARTITION_START_SECTOR * SECTOR
  const rootImage = join(workDir, 'root.ext4')
  await rm(rootImage, {force: true})
  await execa('mke2fs', [
    '-q',
    '-F',
    '-t',
    'ext4',
    '-d',
    root,
    '-U',
    rootUuid,
    '-L',
    'root',
    '-E',
    'lazy_itable_init=0,lazy_journal_init=0',
    rootImage,
    `${Math.floor(partitionBytes / 1024)}k`,
  ])

  const raw = join(workDir, 'disk.raw')
  await rm(raw, {force: true})
  await execa('truncate', ['-s', String(spec.diskBytes), raw])
  await execa('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', raw], {
    input: `label: dos\n\nstart=${PARTITION_START_SECTOR}, type=83, bootable\n`,
  })
  // The filesystem into the partition; sparse so the holes of root.ext4 stay holes.
  await execa('dd', [
    `if=${rootImage}`,
    `of=${raw}`,
    'bs=1M',
    `seek=${PARTITION_START_SECTOR * SECTOR}`,
    'oflag=seek_bytes',
    'conv=notrunc,sparse',
    'status=none',
  ])
  await rm(rootImage)
  // What grub-bios-setup does for an MBR disk: boot.img's code (its default kernel sector is 1), core.img from sector 1.
  const disk = await open(raw, 'r+')
  try {
    await disk.write(bootImg, 0, MBR_CODE_BYTES, 0)
    await disk.write(coreImg, 0, coreImg.length, SECTOR)
  } finally {
    await disk.close()
  }
  await rm(root, {recursive: true, force: true})
  return {raw, kernelVersion: version}
}
