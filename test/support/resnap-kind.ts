/**
 * The promises every kind of resnap box keeps, as the reference box keeps them
 * (test/e2e/resnap.test.ts): a fresh / at every resnap boot, /persistent kept, a missing
 * snapshot made again, `up --no-resnap` keeping the boot's changes. Run through the CLI
 * against a box built from one of boxes/ (once per recipe hash, into the test cache), on
 * one machine shared by the tests of the file, in order. Boots QEMU: run the file under
 * `flock /tmp/box-qemu.lock`.
 */
import {mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ensureBox} from '../../src/builder/index.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {createProgress} from '../../src/lib/core/progress.js'
import {testCacheDir} from './cache.js'
import {box, type CliEnv, sshStdout} from './cli.js'

export interface ResnapKind {
  /** The recipe under boxes/. */
  recipe: string
  /** What resets the snapshot, for the tests' names ("the dracut module"). */
  resetBy: string
  /** The reset's console line of a resnap boot (recreated) or a repair (created missing); global. */
  resnapLine: RegExp
  /** What `box status --json` says of the running machine (its kinds and fill). */
  status: Record<string, unknown>
  /** The fill part of the text `box status` line. */
  statusText: RegExp
  /** More checks of the first boot, for this kind, with what `box status --json` said of the machine. */
  firstBoot: (ssh: (command: string) => Promise<string>, status: Record<string, unknown>) => Promise<void>
  /** Tests of this kind alone, run after the shared ones on the same machine (it runs, booted with resnap). */
  moreTests?: (machine: KindMachine) => void
}

/** The shared machine, for a kind's own tests. */
export interface KindMachine {
  /** A command's stdout (trimmed); it must exit 0. */
  ssh: (command: string) => Promise<string>
  /** `box up` with args; the resnap lines of that boot. */
  up: (args?: string[]) => Promise<string[]>
  halt: () => Promise<void>
  /** What `box status --json` says of the machine. */
  status: () => Promise<Record<string, unknown>>
  /** The CLI in the machine's project. */
  cli: (args: string[]) => ReturnType<typeof box>
}

export function describeResnapKind(kind: ResnapKind): void {
  describe(`${kind.recipe}: resnap by ${kind.resetBy}`, {timeout: 420_000}, () => {
    let root: string
    let env: CliEnv
    let serialLog: string

    const ssh = (command: string) => sshStdout(env, command)
    /** The resnap lines of the serial log (QEMU starts it afresh at every boot). */
    const resnapLines = async () =>
      [...(await readFile(serialLog, 'utf8')).matchAll(kind.resnapLine)].map((match) => match[0])
    /** `box up` with `args`, timed (boot → ssh, for the record), and the resnap lines it printed. */
    const up = async (args: string[] = []) => {
      const started = Date.now()
      const result = await box(env, ['up', ...args])
      expect(result.exitCode, `${result.stdout}\n${result.stderr}`).toBe(0)
      const lines = await resnapLines()
      // Guest uptime when sshd answered: comparable with the reference box's figures (README, Machines).
      const uptime = await ssh('sudo -n systemctl show -P ActiveEnterTimestampMonotonic ssh.service')
      console.log(
        `${kind.recipe}: up ${args.join(' ')} → ssh ${((Date.now() - started) / 1000).toFixed(1)} s (sshd up at ${(Number(uptime) / 1e6).toFixed(1)} s of guest uptime); ${lines.join('; ') || 'no resnap line'}`,
      )
      return lines
    }
    const halt = async () => {
      const result = await box(env, ['halt'])
      expect(result.exitCode, result.stderr).toBe(0)
    }
    const status = async () => {
      const result = await box(env, ['status', '--json'])
      expect(result.exitCode, result.stderr).toBe(0)
      return (JSON.parse(result.stdout) as Record<string, unknown>[])[0]!
    }

    beforeAll(async () => {
      const built = await ensureBox(join(PROJECT_ROOT, 'boxes', kind.recipe), {
        cacheDir: testCacheDir(),
        progress: createProgress({plain: true}),
      })
      if (built.build)
        console.log(
          `${kind.recipe} built in ${(built.build.timings.reduce((sum, t) => sum + t.ms, 0) / 1000).toFixed(0)} s`,
        )
      root = await mkdtemp(join(tmpdir(), `box-${kind.recipe}-`))
      env = {cwd: root, dataDir: join(root, 'data'), cacheDir: testCacheDir()}
      const added = await box(env, ['add', 'kind', built.path])
      expect(added.exitCode, added.stderr).toBe(0)
      await writeFile(join(root, 'Boxfile'), 'box: kind\nmemory: 1024\n')
      serialLog = join(root, '.box', 'machines', 'default', 'serial.log')
    }, 1_800_000)

    afterAll(async () => {
      if (!env) return
      await box(env, ['destroy', '-f'])
      await rm(root, {recursive: true, force: true})
    })

    it(`boots with / on root_snap, recreated by ${kind.resetBy}, and status names the kinds`, async () => {
      const lines = await up()
      expect(lines).toEqual([expect.stringMatching(/^resnap: recreated /)])
      expect(await ssh('findmnt -no SOURCE /')).toBe('/dev/mapper/box-root_snap')
      expect(await ssh('findmnt -no TARGET /persistent')).toBe('/persistent')
      const machine = await status()
      expect(machine).toMatchObject({state: 'running', ...kind.status})
      expect((await box(env, ['status'])).stdout).toMatch(kind.statusText)
      await kind.firstBoot(ssh, machine)
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

    kind.moreTests?.({ssh, up, halt, status, cli: (args) => box(env, args)})
  })
}
