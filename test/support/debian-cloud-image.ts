/**
 * The cloud-init variant of the plain Debian test images (debian-image.ts builds the disk):
 * a generic cloud image as distributions ship them — GRUB, sshd, Debian's own `cloud-init`
 * and growpart, DHCP through ifupdown — and no user, no key, nothing of box. Whoever boots
 * it gets in only through what cloud-init is handed (box's NoCloud seed).
 *
 * Kept apart from debian-image.ts so that the Vagrant-convention box, whose cache key
 * covers that file's source, is not rebuilt for it.
 *
 * Built once and cached in the test cache under images/cloud-<hash>.qcow2 (or
 * nocloud-<hash>.qcow2 for the variant without cloud-init), the hash covering every input.
 */
import {existsSync} from 'node:fs'
import {mkdir, readFile, rename, rm} from 'node:fs/promises'
import {join} from 'node:path'

import {execa} from 'execa'

import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {testCacheDir} from './cache.js'
import {buildDebianImage, hostDebianMirror, imageSpecHash, type DebianImageSpec} from './debian-image.js'

/** What a generic cloud image has besides the base: sshd, sudo, cloud-init and growpart, DHCP. */
export const CLOUD_IMAGE_PACKAGES = [
  'openssh-server',
  'sudo',
  'cloud-init',
  // cloud-init → python3-cryptography needs a virtual package it provides, which debootstrap's resolver does not follow.
  'python3-cffi-backend',
  'cloud-guest-utils',
  'ifupdown',
  'isc-dhcp-client',
  'dbus',
]

/** Only the NoCloud seed (and None after it): without this cloud-init probes cloud metadata services for minutes. */
export const CLOUD_INIT_DATASOURCES = 'datasource_list: [NoCloud, None]\n'

const DISK_GIB = 3

function configureScript(cloudInit: boolean): string {
  return `
echo debian > /etc/hostname
printf '127.0.0.1\\tlocalhost\\n' > /etc/hosts
printf 'UUID=%s / ext4 errors=remount-ro 0 1\\n' "$ROOT_UUID" > /etc/fstab
printf 'source /etc/network/interfaces.d/*\\n\\nauto lo\\niface lo inet loopback\\n' > /etc/network/interfaces
${
  cloudInit
    ? `cat > /etc/cloud/cloud.cfg.d/99-datasources.cfg <<'CFG'
${CLOUD_INIT_DATASOURCES}CFG`
    : `# The image without cloud-init: nothing brings up the network or a user.
:`
}
# Host keys are made at first boot (cloud-init's ssh module) so that no two machines share them.
rm -f /etc/ssh/ssh_host_*
# Without cloud-init, sshd must still start (it would make no keys itself).
${cloudInit ? ':' : 'ssh-keygen -A'}
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
apt-get clean
rm -rf /var/lib/apt/lists/*
`
}

export async function cloudImageSpec(options: {cloudInit?: boolean} = {}): Promise<DebianImageSpec> {
  const cloudInit = options.cloudInit ?? true
  return {
    suite: 'bookworm',
    mirror: await hostDebianMirror(),
    packages: cloudInit ? CLOUD_IMAGE_PACKAGES : CLOUD_IMAGE_PACKAGES.filter((name) => name !== 'cloud-init'),
    configure: configureScript(cloudInit),
    kernelArgs: 'net.ifnames=0 console=ttyS0,115200',
    diskBytes: DISK_GIB * 1024 ** 3,
  }
}

async function fixtureSources(): Promise<string[]> {
  return Promise.all(
    ['debian-cloud-image.ts', 'debian-image.ts'].map((file) =>
      readFile(join(PROJECT_ROOT, 'test', 'support', file), 'utf8'),
    ),
  )
}

/** The cached cloud image, qcow2 (built on first use, a few minutes; needs root for debootstrap and chroot). */
export async function ensureCloudImage(
  options: {cacheDir?: string; cloudInit?: boolean; log?: (line: string) => void} = {},
): Promise<string> {
  const cacheDir = options.cacheDir ?? testCacheDir()
  const spec = await cloudImageSpec(options)
  const hash = imageSpecHash(spec, await fixtureSources())
  const kind = spec.packages.includes('cloud-init') ? 'cloud' : 'nocloud'
  const image = join(cacheDir, 'images', `${kind}-${hash}.qcow2`)
  if (existsSync(image)) return image

  const workDir = join(cacheDir, 'work', `${kind}-${hash}-${process.pid}`)
  await rm(workDir, {recursive: true, force: true})
  try {
    options.log?.(`building the ${kind} test image ${image}`)
    const {raw} = await buildDebianImage(spec, {cacheDir, workDir})
    await mkdir(join(cacheDir, 'images'), {recursive: true})
    const temp = `${image}.tmp-${process.pid}`
    await execa('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, temp])
    await rename(temp, image)
    return image
  } finally {
    await rm(workDir, {recursive: true, force: true})
  }
}
