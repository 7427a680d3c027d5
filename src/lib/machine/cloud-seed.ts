/**
 * What a cloud-image box and host-side resnap need on the host before a boot: the NoCloud
 * seed (an ISO 9660 image labelled `cidata`, made by xorriso without root) and the small
 * persistent disk that survives the fresh overlay of each boot. Both are handed to the
 * provider as extra drives, found in the guest by their virtio serial.
 *
 * Why an ISO made by xorriso: it is one actively maintained program (GNU xorriso, libburnia)
 * that writes the image in one call with nothing to size beforehand, and an ISO is
 * read-only by nature, as the seed is. genisoimage (cdrkit) has had no release since 2010;
 * a vfat seed needs two tools (dosfstools, mtools) and a size chosen in advance.
 */
import {chmod, mkdir, open, readFile, rename, rm, stat, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {cloudSeedFiles, PERSISTENT_SERIAL, SEED_LABEL, SEED_SERIAL, type CloudSeedInput} from '../box/cloud-init.js'
import {BoxError} from '../core/errors.js'
import {run} from '../core/exec.js'
import type {ExtraDrive} from '../../providers/provider.js'

/** Size of host-side resnap's persistent disk: a sparse file, so only what the guest writes takes space. */
export const PERSISTENT_DISK_BYTES = 1024 ** 3

export function cloudFiles(stateDir: string): {seed: string; persistentDisk: string; hostKey: string} {
  return {
    seed: join(stateDir, 'cloud-seed.iso'),
    persistentDisk: join(stateDir, 'persistent.img'),
    hostKey: join(stateDir, 'guest_host_ed25519_key'),
  }
}

/** The machine's ssh host key pair, made once (mode 0600): handed to the guest by the seed at every boot. */
export async function cloudHostKey(stateDir: string): Promise<{privateKey: string; publicKey: string}> {
  const {hostKey} = cloudFiles(stateDir)
  const read = async () => ({
    privateKey: await readFile(hostKey, 'utf8'),
    publicKey: await readFile(`${hostKey}.pub`, 'utf8'),
  })
  const existing = await read().catch(() => undefined)
  if (existing) return existing
  await rm(`${hostKey}.new`, {force: true})
  await rm(`${hostKey}.new.pub`, {force: true})
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'box-host', '-f', `${hostKey}.new`], {
    purpose: "making the machine's ssh host key",
    stdin: 'ignore',
  })
  await rename(`${hostKey}.new.pub`, `${hostKey}.pub`)
  await rename(`${hostKey}.new`, hostKey)
  return read()
}

/** Write this boot's seed (replacing the last one) and return it as a read-only drive. */
export async function writeCloudSeed(
  stateDir: string,
  input: Omit<CloudSeedInput, 'publicKey' | 'hostKey'> & {publicKeyFile: string},
): Promise<ExtraDrive> {
  const {seed} = cloudFiles(stateDir)
  const publicKey = await readFile(input.publicKeyFile, 'utf8').catch((error: unknown) => {
    throw new BoxError(`cannot read ${input.publicKeyFile}, the public key the cloud-init seed must carry`, {
      cause: error,
      suggestions: [
        'a cloud image trusts only the key box hands it: put the public key next to ssh.private_key_path (KEY.pub)',
      ],
    })
  })
  const files = cloudSeedFiles({...input, publicKey, hostKey: await cloudHostKey(stateDir)})
  const dir = join(stateDir, 'cloud-seed')
  await rm(dir, {recursive: true, force: true})
  await mkdir(dir, {mode: 0o700})
  try {
    for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text, {mode: 0o600})
    await rm(`${seed}.tmp`, {force: true})
    await run(
      'xorriso',
      [
        '-as',
        'mkisofs',
        '-quiet',
        '-output',
        `${seed}.tmp`,
        '-volid',
        SEED_LABEL,
        '-joliet',
        '-rock',
        ...Object.keys(files).map((name) => join(dir, name)),
      ],
      {purpose: 'writing the cloud-init seed', stdin: 'ignore'},
    )
    // It holds the guest's private host key.
    await chmod(`${seed}.tmp`, 0o600)
    await rename(`${seed}.tmp`, seed)
  } finally {
    await rm(dir, {recursive: true, force: true})
  }
  return {file: seed, serial: SEED_SERIAL, readOnly: true}
}

/** The persistent disk as a drive, made (empty; the guest formats it) when `create` and missing; undefined when absent. */
export async function persistentDrive(stateDir: string, options: {create: boolean}): Promise<ExtraDrive | undefined> {
  const {persistentDisk} = cloudFiles(stateDir)
  const present = await stat(persistentDisk).then(
    (info) => info.isFile(),
    () => false,
  )
  if (!present) {
    if (!options.create) return undefined
    const handle = await open(`${persistentDisk}.tmp`, 'w', 0o600)
    try {
      await handle.truncate(PERSISTENT_DISK_BYTES)
    } finally {
      await handle.close()
    }
    await rename(`${persistentDisk}.tmp`, persistentDisk)
  }
  return {file: persistentDisk, serial: PERSISTENT_SERIAL}
}
