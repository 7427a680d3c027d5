import {open, mkdtemp, readFile, rm, stat, truncate, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ensureBox} from '../../src/builder/index.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {QemuProvider} from '../../src/providers/qemu/index.js'
import {instanceFiles} from '../../src/providers/qemu/instance.js'
import {QmpClient} from '../../src/providers/qemu/qmp.js'
import {testCacheDir} from '../support/cache.js'
import {box, type CliEnv, sshStdout} from '../support/cli.js'

/** QEMU processes whose command line mentions `text` (pgrep, as a user would check for orphans). */
async function qemuProcessesMentioning(text: string): Promise<string[]> {
  const {stdout} = await execa('pgrep', ['-af', 'qemu-system'], {reject: false})
  return stdout.split('\n').filter((line) => line.includes(text))
}

const boxfile = (memory: number) => `box: reference
memory: ${memory}
cpus: 2
forwarded_ports:
  - guest: 8080
    host: 18931
`

interface ListedSnapshot {
  name: string
  kind: string
  current: boolean
  parent?: string
  stateBytes?: number
}

describe('box snapshot on QEMU', {timeout: 600_000}, () => {
  let env: CliEnv
  let project: string
  let stateDir: string
  const provider = new QemuProvider(testCacheDir())

  const ssh = (command: string) => sshStdout(env, command)
  const generationId = async () => {
    const qmp = await QmpClient.connect(instanceFiles(stateDir).qmpSocket)
    try {
      return (await qmp.execute<{guid: string}>('query-vm-generation-id')).guid
    } finally {
      qmp.close()
    }
  }
  const list = async (): Promise<ListedSnapshot[]> => {
    const result = await box(env, ['snapshot', 'list', '--json'])
    expect(result.exitCode, result.stderr).toBe(0)
    const [entry] = JSON.parse(result.stdout) as Array<{machine: string; snapshots: ListedSnapshot[]}>
    expect(entry!.machine).toBe('default')
    return entry!.snapshots
  }
  const stateFileOf = async (name: string) => {
    const index = JSON.parse(await readFile(join(stateDir, 'snapshots', 'index.json'), 'utf8')) as {
      snapshots: Array<{name: string; state?: string}>
    }
    return join(stateDir, index.snapshots.find((snapshot) => snapshot.name === name)!.state!)
  }

  beforeAll(async () => {
    const {path: boxFile} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {cacheDir: testCacheDir()})
    const root = await mkdtemp(join(tmpdir(), 'box-snapshot-'))
    project = join(root, 'project')
    stateDir = join(project, '.box', 'machines', 'default')
    await execa('mkdir', ['-p', project])
    env = {cwd: project, dataDir: join(root, 'data'), cacheDir: testCacheDir()}
    const added = await box(env, ['add', 'reference', boxFile])
    expect(added.exitCode, added.stderr).toBe(0)
    await writeFile(join(project, 'Boxfile'), boxfile(1024))
    const up = await box(env, ['up'])
    expect(up.exitCode, up.stderr).toBe(0)
  })

  afterAll(async () => {
    if (env) {
      await box(env, ['destroy', '-f'])
      await rm(join(env.cwd, '..'), {recursive: true, force: true})
    }
  })

  it('a running snapshot resumes where it was: later files gone, clock set, agent and ssh answer, same boot, new generation ID', async () => {
    const bootId = await ssh('cat /proc/sys/kernel/random/boot_id')
    const generationBefore = await generationId()
    await ssh('echo before | sudo tee /root/before >/dev/null')
    const save = await box(env, ['snapshot', 'save', 'default', 'running1'])
    expect(save.exitCode, save.stderr).toBe(0)
    expect(save.stdout).toContain('default: saved snapshot "running1" (disk and running state)')
    // The machine kept running through the save, on the same QEMU (the ssh master still works).
    expect(await ssh('sudo cat /root/before')).toBe('before')
    await ssh('echo after | sudo tee /root/after >/dev/null')
    // Long enough that a clock left where the state had it would be seconds behind.
    await sleep(6000)

    const restore = await box(env, ['snapshot', 'restore', 'running1'])
    expect(restore.exitCode, restore.stderr).toBe(0)
    expect(restore.stdout).toMatch(/default: restored snapshot "running1", running \(ssh on 127\.0\.0\.1:\d+\)/)
    expect(await ssh('sudo ls /root')).toBe('before')
    const hostBefore = Date.now() / 1000
    const guestClock = Number(await ssh('date +%s.%N'))
    const hostAfter = Date.now() / 1000
    expect(guestClock).toBeGreaterThan(hostBefore - 2)
    expect(guestClock).toBeLessThan(hostAfter + 2)
    expect(await provider.askAgent({stateDir}, 'ping', {timeoutMs: 5000})).toBe('pong')
    expect(await ssh('cat /proc/sys/kernel/random/boot_id')).toBe(bootId)
    expect(await generationId()).not.toBe(generationBefore)
    const status = JSON.parse((await box(env, ['status', '--json'])).stdout) as Array<{
      state: string
      forwardedPorts: Array<{guest: number; host: number}>
    }>
    expect(status[0]!.state).toBe('running')
    expect(status[0]!.forwardedPorts).toEqual([expect.objectContaining({guest: 8080, host: 18931})])
  })

  it('two restores of one state draw different random numbers (the agent reseeds the kernel RNG)', async () => {
    const draws: string[] = []
    for (let i = 0; i < 2; i++) {
      const restore = await box(env, ['snapshot', 'restore', 'running1'])
      expect(restore.exitCode, restore.stderr).toBe(0)
      draws.push(await ssh('head -c 16 /dev/urandom | od -An -tx1'))
    }
    expect(draws[0]).not.toBe(draws[1])
  })

  it('list --json shows the snapshots, and deleting one another builds on is refused', async () => {
    const save = await box(env, ['snapshot', 'save', 'second'])
    expect(save.exitCode, save.stderr).toBe(0)
    const snapshots = await list()
    expect(snapshots.map((s) => [s.name, s.kind, s.current, s.parent])).toEqual([
      ['running1', 'running', false, undefined],
      ['second', 'running', true, 'running1'],
    ])
    expect(snapshots[0]!.stateBytes).toBeGreaterThan(10_000_000)
    const refused = await box(env, ['snapshot', 'delete', 'running1'])
    expect(refused.exitCode).not.toBe(0)
    expect(refused.stderr).toContain('snapshot "running1" cannot be deleted: "second" builds on it')
    expect((await list()).map((s) => s.name)).toEqual(['running1', 'second'])
  })

  it('a state saved with other memory than the Boxfile now says is refused, and the machine keeps running', async () => {
    await writeFile(join(project, 'Boxfile'), boxfile(2048))
    try {
      const refused = await box(env, ['snapshot', 'restore', 'running1'])
      expect(refused.exitCode).not.toBe(0)
      expect(refused.stderr).toContain(
        'snapshot "running1" of machine default cannot be resumed: it was saved with memory: 1024 (MiB), the Boxfile now says memory: 2048',
      )
      expect(await ssh('true')).toBe('')
    } finally {
      await writeFile(join(project, 'Boxfile'), boxfile(1024))
    }
  })

  it('a truncated state is refused before anything is stopped', async () => {
    const state = await stateFileOf('second')
    const size = (await stat(state)).size
    const copy = `${state}.orig`
    await execa('cp', ['--sparse=always', state, copy])
    try {
      await truncate(state, Math.floor(size / 2))
      const refused = await box(env, ['snapshot', 'restore', 'second'])
      expect(refused.exitCode).not.toBe(0)
      expect(refused.stderr).toMatch(
        /saved state of snapshot "second" of machine default is \d+ bytes but \d+ were saved: it is truncated/,
      )
      expect(await ssh('true')).toBe('')
    } finally {
      await execa('mv', [copy, state])
    }
  })

  it('a corrupt state is refused and leaves no QEMU behind', async () => {
    const state = await stateFileOf('second')
    const size = (await stat(state)).size
    const handle = await open(state, 'r+')
    const original = Buffer.alloc(4096)
    await handle.read(original, 0, original.length, Math.floor(size / 2))
    await handle.write(Buffer.alloc(4096, 0xa5), 0, 4096, Math.floor(size / 2))
    try {
      const refused = await box(env, ['snapshot', 'restore', 'second'])
      expect(refused.exitCode).not.toBe(0)
      expect(refused.stderr).toMatch(
        /the saved state of snapshot "second" of machine default is corrupt: (its checksum is not the one recorded at save|QEMU could not load it)/,
      )
      expect(await qemuProcessesMentioning(stateDir)).toEqual([])
      expect((await box(env, ['status', '--json'])).stdout).toContain('"poweroff"')
    } finally {
      await handle.write(original, 0, original.length, Math.floor(size / 2))
      await handle.close()
    }
  })

  it('a halted machine gets a disk snapshot; restoring it brings the disk back and leaves the machine halted', async () => {
    const save = await box(env, ['snapshot', 'save', 'halted1'])
    expect(save.exitCode, save.stderr).toBe(0)
    expect(save.stdout).toContain('default: saved snapshot "halted1" (disk)')
    expect((await list()).find((s) => s.name === 'halted1')).toMatchObject({kind: 'disk', current: true})
    // Into a running machine again, mark /persistent (survives resnap boots), halt, go back.
    const resumed = await box(env, ['snapshot', 'restore', 'second'])
    expect(resumed.exitCode, resumed.stderr).toBe(0)
    await ssh('echo mark | sudo tee /persistent/mark >/dev/null && sync')
    expect((await box(env, ['halt'])).exitCode).toBe(0)
    const restore = await box(env, ['snapshot', 'restore', 'halted1'])
    expect(restore.exitCode, restore.stderr).toBe(0)
    expect(restore.stdout).toContain('default: restored snapshot "halted1", halted')
    const up = await box(env, ['up'])
    expect(up.exitCode, up.stderr).toBe(0)
    expect(await ssh('ls /persistent/mark 2>/dev/null || echo absent')).toBe('absent')
  })

  it('delete drops snapshots newest first without touching the box image; destroy removes the rest', async () => {
    const image = join(env.dataDir, 'boxes')
    const {stdout: before} = await execa('sh', ['-c', `find ${image} -name box.img -exec sha256sum {} +`])
    for (const name of ['halted1', 'second']) {
      const deleted = await box(env, ['snapshot', 'delete', name])
      expect(deleted.exitCode, deleted.stderr).toBe(0)
      // The machine's disk builds on them: their layers stay, unnamed.
      expect(deleted.stdout).toContain(`deleted snapshot "${name}" (its disk layer stays under the machine's disk)`)
    }
    expect((await list()).map((s) => s.name)).toEqual(['running1'])
    expect(await ssh('true')).toBe('')
    expect((await execa('sh', ['-c', `find ${image} -name box.img -exec sha256sum {} +`])).stdout).toBe(before)
    const destroy = await box(env, ['destroy', '-f'])
    expect(destroy.exitCode, destroy.stderr).toBe(0)
    await expect(stat(join(stateDir, 'snapshots'))).rejects.toThrow()
    expect(await qemuProcessesMentioning(project)).toEqual([])
  })
})
