/**
 * The NoCloud seed box hands a cloud-image box (`cloud_init: true` in its metadata) at
 * every boot: meta-data (instance id, host name) and user-data (the login user with the
 * machine's own public key, growpart, and the `/persistent` disk of host-side resnap).
 * cloud-init finds it as a filesystem labelled `cidata` (machine/cloud-seed.ts writes the
 * ISO). Both files are YAML; they are written as JSON, which is YAML, so no value can
 * break out of its place whatever it holds.
 */

/** The volume label cloud-init's NoCloud datasource looks for. */
export const SEED_LABEL = 'cidata'

/** Virtio serial of the seed drive and of the host-side resnap's persistent disk (/dev/disk/by-id/virtio-SERIAL). */
export const SEED_SERIAL = 'box-cidata'
export const PERSISTENT_SERIAL = 'box-persistent'

/** Where host-side resnap's volume is mounted, as boxes built by box mount their persistent LV. */
export const PERSISTENT_MOUNT = '/persistent'

export interface CloudSeedInput {
  /** Stable per machine: cloud-init runs its once-per-instance steps again only for a new one. */
  instanceId: string
  hostname: string
  user: string
  /** The machine's own ssh public key (one line). */
  publicKey: string
  /** Mount the persistent disk (host-side resnap) at /persistent. */
  persistent: boolean
  /**
   * The machine's ssh host key (ed25519), made on the host once: every fresh root serves
   * the same key, which box pinned before the first login.
   */
  hostKey: {privateKey: string; publicKey: string}
}

/**
 * Format the persistent disk the first time (blkid says 2: no filesystem at all; any other
 * failure leaves it alone) and mount it, at every boot: the fresh root of a host-side resnap
 * has no fstab entry for it.
 */
export function persistentMountScript(): string {
  const device = `/dev/disk/by-id/virtio-${PERSISTENT_SERIAL}`
  return [
    'udevadm settle --timeout=30 || true',
    `dev=${device}`,
    '[ -b "$dev" ] || exit 0',
    'rc=0; blkid -p "$dev" >/dev/null 2>&1 || rc=$?',
    '[ "$rc" -ne 2 ] || mkfs.ext4 -q -L persistent "$dev"',
    `mkdir -p ${PERSISTENT_MOUNT}`,
    `mountpoint -q ${PERSISTENT_MOUNT} || mount "$dev" ${PERSISTENT_MOUNT}`,
  ].join('\n')
}

/** A host name from a machine name: letters, digits and dashes, at most 63 of them. */
export function seedHostname(name: string): string {
  const cleaned = name
    .replace(/[^A-Za-z0-9-]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 63)
  return cleaned || 'box'
}

export function cloudSeedFiles(input: CloudSeedInput): {'meta-data': string; 'user-data': string} {
  const metaData = {'instance-id': input.instanceId, 'local-hostname': input.hostname}
  const userData: Record<string, unknown> = {
    hostname: input.hostname,
    manage_etc_hosts: true,
    // Only box's user: no distribution default user, no passwords.
    users: [
      {
        name: input.user,
        shell: '/bin/bash',
        sudo: 'ALL=(ALL) NOPASSWD:ALL',
        lock_passwd: true,
        ssh_authorized_keys: [input.publicKey.trim()],
      },
    ],
    // With keys given, cloud-init deletes the image's host keys and generates none.
    ssh_keys: {ed25519_private: input.hostKey.privateKey, ed25519_public: input.hostKey.publicKey.trim()},
    ssh_pwauth: false,
    disable_root: true,
    growpart: {mode: 'auto', devices: ['/']},
    resize_rootfs: true,
  }
  // bootcmd runs at every boot, early (before sshd lets anyone in).
  if (input.persistent) userData.bootcmd = [['sh', '-c', persistentMountScript()]]
  return {
    'meta-data': `${JSON.stringify(metaData, null, 2)}\n`,
    'user-data': `#cloud-config\n${JSON.stringify(userData, null, 2)}\n`,
  }
}
