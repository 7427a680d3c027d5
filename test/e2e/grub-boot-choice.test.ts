/**
 * The boot choice through the box's own grub under QEMU (firmware boot): the reference box
 * repacked without its kernel and initrd, so QEMU cannot boot it directly and its grub
 * picks the entry from the SMBIOS system SKU QEMU is given (`-smbios type=1,sku=…`, the
 * fragment of src/lib/box/boot-choice.ts in the grub.cfg the builder writes). Each of the
 * three entries is booted through the CLI and checked in the guest. One machine is shared
 * by the tests of this file, in order. Boots QEMU: run under `flock /tmp/box-qemu.lock`.
 */
import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ensureBox} from '../../src/builder/index.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {testCacheDir} from '../support/cache.js'
import {box, type CliEnv, sshStdout} from '../support/cli.js'

/** The reference recipe's grub entries' arguments (boxes/debian-bookworm: vg box, 2G snapshot). */
const ENTRY_ARGS = {
  resnap:
    'BOOT_IMAGE=/vmlinuz root=/dev/mapper/box-root_snap ro volgroup=box lvroot=root lvsnap=root_snap lvsize=2G resnap',
  keep: 'BOOT_IMAGE=/vmlinuz root=/dev/mapper/box-root_snap ro volgroup=box lvroot=root lvsnap=root_snap lvsize=2G console=',
  origin:
    'BOOT_IMAGE=/vmlinuz root=/dev/mapper/box-root ro volgroup=box lvroot=root lvsnap=root_snap lvsize=2G console=',
}

describe('the boot choice through grub on a firmware boot under QEMU', {timeout: 600_000}, () => {
  let root: string
  let env: CliEnv
  const ssh = (command: string) => sshStdout(env, command)
  const up = async (...flags: string[]) => {
    const result = await box(env, ['up', ...flags])
    expect(result.exitCode, `${result.stdout}\n${result.stderr}`).toBe(0)
    return `${result.stdout}\n${result.stderr}`
  }
  const halt = async () => {
    const result = await box(env, ['halt'])
    expect(result.exitCode, result.stderr).toBe(0)
  }
  const marker = () => ssh('sudo cat /root/marker 2>/dev/null || echo absent')

  beforeAll(async () => {
    const {path: referenceBox} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {
      cacheDir: testCacheDir(),
    })
    root = await mkdtemp(join(tmpdir(), 'box-grub-choice-'))
    // The reference box without vmlinuz, initrd.img and their metadata fields: only its grub can boot it.
    const unpacked = join(root, 'unpacked')
    await mkdir(unpacked)
    await execa('tar', ['--zstd', '-xf', referenceBox, '-C', unpacked, 'metadata.json', 'Vagrantfile', 'box.img'])
    const metadata = JSON.parse(await readFile(join(unpacked, 'metadata.json'), 'utf8'))
    delete metadata.box.kernel
    delete metadata.box.initrd
    await writeFile(join(unpacked, 'metadata.json'), `${JSON.stringify(metadata, null, 2)}\n`)
    const grubBox = join(root, 'grub-booted.box')
    await execa('tar', ['-cf', grubBox, '-C', unpacked, 'metadata.json', 'Vagrantfile', 'box.img'])
    await rm(unpacked, {recursive: true})
    const project = join(root, 'project')
    await mkdir(project)
    env = {cwd: project, dataDir: join(root, 'data'), cacheDir: testCacheDir()}
    const added = await box(env, ['add', 'grub-booted', grubBox])
    expect(added.exitCode, added.stderr).toBe(0)
    await rm(grubBox)
    await writeFile(join(project, 'Boxfile'), 'box: grub-booted\nmemory: 1024\n')
    await up()
  }, 900_000)

  afterAll(async () => {
    if (!env) return
    await box(env, ['destroy', '-f'])
    await rm(root, {recursive: true, force: true})
  })

  it('up: grub boots the resnap entry (the SKU says so) and / is reset', async () => {
    // Booted by grub, not directly: no TCG-only arguments, grub's BOOT_IMAGE, the box's grub.cfg.
    expect(await ssh('cat /proc/cmdline')).not.toContain('mitigations=off')
    expect(await ssh('sudo grep -c "smbios --type 1 --get-string 25" /boot/grub/grub.cfg')).toBe('1')
    await ssh('echo written | sudo tee /root/marker >/dev/null; sync')
    await halt()
    await up()
    expect(await ssh('cat /sys/class/dmi/id/product_sku')).toBe('box-boot=resnap')
    expect(await ssh('cat /proc/cmdline')).toContain(`${ENTRY_ARGS.resnap} `)
    expect(await ssh('findmnt -no SOURCE /')).toBe('/dev/mapper/box-root_snap')
    expect(await marker()).toBe('absent')
  })

  it('up --no-resnap: grub boots the keep entry and the marker stays', async () => {
    await ssh('echo written | sudo tee /root/marker >/dev/null; sync')
    await halt()
    await up('--no-resnap')
    expect(await ssh('cat /sys/class/dmi/id/product_sku')).toBe('box-boot=keep')
    const cmdline = await ssh('cat /proc/cmdline')
    expect(cmdline).toContain(ENTRY_ARGS.keep)
    expect(cmdline).not.toMatch(/\bresnap\b/)
    expect(await ssh('findmnt -no SOURCE /')).toBe('/dev/mapper/box-root_snap')
    expect(await marker()).toBe('written')
  })

  it('up --base: grub boots the origin entry, / is the origin LV without the snapshot’s marker', async () => {
    await halt()
    const said = await up('--base')
    expect(said).toContain('booting the origin (--base)')
    expect(await ssh('cat /sys/class/dmi/id/product_sku')).toBe('box-boot=origin')
    expect(await ssh('cat /proc/cmdline')).toContain(ENTRY_ARGS.origin)
    expect(await ssh('findmnt -no SOURCE /')).toBe('/dev/mapper/box-root')
    expect(await marker()).toBe('absent')
  })
})
