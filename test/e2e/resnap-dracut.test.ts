/**
 * The dracut box (boxes/debian-bookworm-dracut: Debian's dracut 059 instead of
 * initramfs-tools), booted for real through the CLI: its resnap runs through box's dracut
 * module (initramfs/dracut/90resnap), and it must keep the promises the reference box keeps
 * (test/e2e/resnap.test.ts): a fresh / at every resnap boot, /persistent kept, a missing
 * snapshot made again, `up --no-resnap` keeping the boot's changes. Built once per recipe
 * hash into the test cache like the reference box. One machine is shared by the tests of
 * this file, in order. Boots QEMU: run under `flock /tmp/box-qemu.lock`.
 */
import {mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ensureBox} from '../../src/builder/index.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {createProgress} from '../../src/lib/core/progress.js'
import {testCacheDir} from '../support/cache.js'
import {box, type CliEnv} from '../support/cli.js'

/** The dracut module's console line for a resnap boot (recreated) or a repair (created missing). */
const RESNAP_LINE = /resnap: (recreated|created missing) box\/root_snap \(2G\) from box\/root in (\d+\.\d+) s/g

describe('dracut box: resnap through initramfs/dracut/90resnap', {timeout: 420_000}, () => {
  let root: string
  let env: CliEnv
  let serialLog: string

  const ssh = async (command: string) => {
    const result = await box(env, ['ssh', '-c', command])
    expect(result.exitCode, `${result.stdout}\n${result.stderr}`).toBe(0)
    return result.stdout.trim()
  }
  /** The resnap lines of the serial log (QEMU starts it afresh at every boot). */
  const resnapLines = async () =>
    [...(await readFile(serialLog, 'utf8')).matchAll(RESNAP_LINE)].map((match) => match[0])
  /** `box up` with `args`, timed (boot → ssh, for the record), and the resnap lines it printed. */
  const up = async (args: string[] = []) => {
    const started = Date.now()
    const result = await box(env, ['up', ...args])
    expect(result.exitCode, `${result.stdout}\n${result.stderr}`).toBe(0)
    const lines = await resnapLines()
    // Guest uptime when sshd answered: comparable with the reference box's figures (README, Machines).
    const uptime = (await ssh('sudo -n systemctl show -P ActiveEnterTimestampMonotonic ssh.service')).trim()
    console.log(
      `dracut box: up ${args.join(' ')} → ssh ${((Date.now() - started) / 1000).toFixed(1)} s (sshd up at ${(Number(uptime) / 1e6).toFixed(1)} s of guest uptime); ${lines.join('; ') || 'no resnap line'}`,
    )
    return lines
  }
  const halt = async () => {
    const result = await box(env, ['halt'])
    expect(result.exitCode, result.stderr).toBe(0)
  }

  beforeAll(async () => {
    const built = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm-dracut'), {
      cacheDir: testCacheDir(),
      progress: createProgress({plain: true}),
    })
    if (built.build)
      console.log(`dracut box built in ${(built.build.timings.reduce((sum, t) => sum + t.ms, 0) / 1000).toFixed(0)} s`)
    root = await mkdtemp(join(tmpdir(), 'box-dracut-'))
    env = {cwd: root, dataDir: join(root, 'data'), cacheDir: testCacheDir()}
    const added = await box(env, ['add', 'dracut', built.path])
    expect(added.exitCode, added.stderr).toBe(0)
    await writeFile(join(root, 'Boxfile'), 'box: dracut\nmemory: 1024\n')
    serialLog = join(root, '.box', 'machines', 'default', 'serial.log')
  }, 1_800_000)

  afterAll(async () => {
    if (!env) return
    await box(env, ['destroy', '-f'])
    await rm(root, {recursive: true, force: true})
  })

  it('boots with / on root_snap, recreated by the dracut module, and status names the kinds', async () => {
    const lines = await up()
    expect(lines).toEqual([expect.stringMatching(/^resnap: recreated /)])
    expect(await ssh('findmnt -no SOURCE /')).toBe('/dev/mapper/box-root_snap')
    expect(await ssh('findmnt -no TARGET /persistent')).toBe('/persistent')
    // The initramfs that booted is dracut's, with box's module and no initramfs-tools in the image.
    expect(
      await ssh('sudo -n lsinitrd "$(readlink -f /boot/initrd.img)" | grep -c "hooks/pre-mount/10-resnap.sh"'),
    ).toBe('1')
    const selections = (await ssh('dpkg --get-selections dracut initramfs-tools 2>/dev/null')).split('\n')
    expect(selections.map((line) => line.split(/\s+/).join(' '))).toContain('dracut install')
    expect(selections.join('\n')).not.toMatch(/^initramfs-tools\s+install$/m)
    const status = await box(env, ['status', '--json'])
    expect(status.exitCode, status.stderr).toBe(0)
    const [machine] = JSON.parse(status.stdout)
    expect(machine).toMatchObject({state: 'running', initramfs: 'dracut', snapshotKind: 'classic'})
    expect(typeof machine.snapshotUsedPercent).toBe('number')
    expect((await box(env, ['status'])).stdout).toMatch(/root snapshot \d+\.\d% used \(classic, resnap by dracut\)$/m)
  })

  it('throws away a file written in / on the next resnap boot and keeps /persistent', async () => {
    await ssh(
      'echo gone | sudo -n tee /resnap-marker /root/scratch >/dev/null; echo kept | sudo -n tee /persistent/kept >/dev/null; sync',
    )
    await halt()
    expect(await up()).toEqual([expect.stringMatching(/^resnap: recreated /)])
    expect(await ssh('test -e /resnap-marker || test -e /root/scratch && echo present || echo absent')).toBe('absent')
    expect(await ssh('cat /persistent/kept')).toBe('kept')
  })

  it('up --no-resnap keeps the boot’s changes', async () => {
    await ssh('echo stays | sudo -n tee /resnap-marker >/dev/null; sync')
    await halt()
    expect(await up(['--no-resnap'])).toEqual([])
    expect(await ssh('cat /resnap-marker')).toBe('stays')
    expect(await ssh('findmnt -no SOURCE /')).toBe('/dev/mapper/box-root_snap')
    expect(await ssh('cat /proc/cmdline')).not.toMatch(/\bresnap\b/)
  })

  it('makes a snapshot removed by hand again, with a fresh /', async () => {
    // / is on root_snap, which lvremove cannot take while it is mounted: from the origin (--base).
    await halt()
    await up(['--base'])
    expect(await ssh('findmnt -no SOURCE /')).toBe('/dev/mapper/box-root')
    expect(await ssh('test -e /resnap-marker && echo present || echo absent')).toBe('absent')
    await ssh('sudo -n lvm lvremove -y box/root_snap >/dev/null')
    expect(await ssh('sudo -n lvm lvs --noheadings -o lv_name box | xargs')).not.toMatch(/root_snap/)
    await halt()
    expect(await up()).toEqual([expect.stringMatching(/^resnap: created missing /)])
    expect(await ssh('findmnt -no SOURCE /')).toBe('/dev/mapper/box-root_snap')
    expect(await ssh('sudo -n lvm lvs --noheadings -o lv_name,origin box/root_snap | xargs')).toBe('root_snap root')
    // The marker the --no-resnap boot kept lived in the removed snapshot.
    expect(await ssh('test -e /resnap-marker && echo present || echo absent')).toBe('absent')
    expect(await ssh('cat /persistent/kept')).toBe('kept')
  })
})
