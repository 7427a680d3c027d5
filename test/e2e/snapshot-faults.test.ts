import {existsSync} from 'node:fs'
import {mkdir, mkdtemp, readFile, readdir, rm, statfs} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ensureBox} from '../../src/builder/index.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {instanceFiles} from '../../src/providers/qemu/instance.js'
import {QmpClient} from '../../src/providers/qemu/qmp.js'
import {testCacheDir} from '../support/cache.js'
import {BIN, box, type CliEnv, sshStdout} from '../support/cli.js'

/** QEMU processes whose command line mentions `text` (pgrep, as a user would check for orphans). */
async function qemuProcessesMentioning(text: string): Promise<string[]> {
  const {stdout} = await execa('pgrep', ['-af', 'qemu-system'], {reject: false})
  return stdout.split('\n').filter((line) => line.includes(text))
}

async function waitFor(what: string, test: () => boolean | Promise<boolean>, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await test())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(5)
  }
}

/**
 * Fault tests of `box snapshot` (issue 19): a full disk while saving, Ctrl-C while saving
 * and while restoring, two snapshot commands at once; and `pop` leaving the chain as long
 * as it was before the push. One machine, its project on a small tmpfs of its own.
 */
describe('box snapshot faults on QEMU', {timeout: 600_000}, () => {
  let env: CliEnv
  let root: string
  let project: string
  let stateDir: string
  let onTmpfs = false

  const ssh = (command: string) => sshStdout(env, command)
  const qmp = async <T>(command: string): Promise<T> => {
    const client = await QmpClient.connect(instanceFiles(stateDir).qmpSocket)
    try {
      return await client.execute<T>(command)
    } finally {
      client.close()
    }
  }
  const qemuPid = async () => (await readFile(join(stateDir, 'qemu.pid'), 'utf8')).trim()
  const guestStatus = async () => (await qmp<{status: string}>('query-status')).status
  const names = async (): Promise<string[]> => {
    const result = await box(env, ['snapshot', 'list', '--json'])
    expect(result.exitCode, result.stderr).toBe(0)
    const [entry] = JSON.parse(result.stdout) as Array<{snapshots: Array<{name: string}>}>
    return entry!.snapshots.map((snapshot) => snapshot.name)
  }
  /** Files of the running disk's backing chain, as qemu-img sees them (-U: QEMU holds the lock). */
  const chainLength = async (): Promise<number> => {
    const file = (await guestRunning())
      ? (await qmp<Array<{inserted?: {file: string}}>>('query-block')).find((block) => block.inserted)!.inserted!.file
      : join(stateDir, 'disk.qcow2')
    const {stdout} = await execa('qemu-img', ['info', '-U', '--backing-chain', '--output=json', file])
    return (JSON.parse(stdout) as unknown[]).length
  }
  const guestRunning = async () => existsSync(join(stateDir, 'qemu.pid'))
  const leftovers = async () =>
    (await readdir(join(stateDir, 'snapshots')).catch(() => [] as string[])).filter((file) => file.endsWith('.partial'))
  /** The CLI in a process group of its own, as a terminal runs it (Ctrl-C signals the group). */
  const spawnBox = (args: string[]) =>
    execa(BIN, args, {
      cwd: env.cwd,
      reject: false,
      detached: true,
      stdin: 'ignore',
      env: {BOX_DATA_DIR: env.dataDir, BOX_CACHE_DIR: env.cacheDir, NO_COLOR: '1'},
    })
  /**
   * Ctrl-C at a moment the test chose: the group is stopped there (SIGSTOP, so the work
   * cannot finish meanwhile), interrupted, and let go.
   */
  const interruptGroup = (pid: number) => {
    process.kill(-pid, 'SIGSTOP')
    process.kill(-pid, 'SIGINT')
    process.kill(-pid, 'SIGCONT')
  }

  beforeAll(async () => {
    const {path: boxFile} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {cacheDir: testCacheDir()})
    root = await mkdtemp(join(tmpdir(), 'box-snapshot-faults-'))
    project = join(root, 'project')
    stateDir = join(project, '.box', 'machines', 'default')
    await mkdir(project)
    // A file system of its own for the project, so it can be filled (needs root, as in CI).
    onTmpfs =
      (await execa('mount', ['-t', 'tmpfs', '-o', 'size=1g,mode=0700', 'tmpfs', project], {reject: false})).exitCode ===
      0
    env = {cwd: project, dataDir: join(root, 'data'), cacheDir: testCacheDir()}
    const added = await box(env, ['add', 'reference', boxFile])
    expect(added.exitCode, added.stderr).toBe(0)
    await execa('sh', ['-c', `printf 'box: reference\\nmemory: 1024\\ncpus: 2\\n' > Boxfile`], {cwd: project})
    const up = await box(env, ['up'])
    expect(up.exitCode, up.stderr).toBe(0)
  })

  afterAll(async () => {
    if (!env) return
    await box(env, ['destroy', '-f'])
    if (onTmpfs) await execa('umount', [project], {reject: false})
    await rm(root, {recursive: true, force: true})
  })

  it('pop resumes the pushed state and leaves the disk chain as long as before the push, running or halted', async () => {
    const before = await chainLength()
    for (let round = 0; round < 2; round++) {
      const pushed = await box(env, ['snapshot', 'push'])
      expect(pushed.exitCode, pushed.stderr).toBe(0)
      expect(await chainLength()).toBe(before + 1)
      await ssh(`echo ${round} | sudo tee /root/after-push >/dev/null`)
      const popped = await box(env, ['snapshot', 'pop'])
      expect(popped.exitCode, popped.stderr).toBe(0)
      expect(popped.stdout).toMatch(/popped snapshot "push_\d+_\d{4}", running/)
      expect(await ssh('sudo cat /root/after-push 2>/dev/null || echo absent')).toBe('absent')
      expect(await names()).toEqual([])
      expect(await chainLength()).toBe(before)
    }
    expect((await readdir(join(stateDir, 'snapshots'))).filter((file) => /\.state/.test(file))).toEqual([])

    expect((await box(env, ['halt'])).exitCode).toBe(0)
    const halted = await chainLength()
    expect((await box(env, ['snapshot', 'push'])).exitCode).toBe(0)
    const popped = await box(env, ['snapshot', 'pop'])
    expect(popped.exitCode, popped.stderr).toBe(0)
    expect(popped.stdout).toContain('halted')
    expect(await chainLength()).toBe(halted)
    expect(await names()).toEqual([])
    const up = await box(env, ['up'])
    expect(up.exitCode, up.stderr).toBe(0)
  })

  it('a full disk while saving: refused with the reason, no .partial left, the machine goes on running', async (context) => {
    if (!onTmpfs) context.skip() // no tmpfs of its own without root
    const pid = await qemuPid()
    const snapshotsBefore = await names()
    const info = await statfs(project)
    // Room for the guest's own writes, far less than its ~170 MB of RAM state.
    const filler = join(project, 'filler')
    await execa('fallocate', ['-l', String(info.bavail * info.bsize - 48 * 1024 * 1024), filler])
    try {
      const save = await box(env, ['snapshot', 'save', 'full'])
      expect(save.exitCode).not.toBe(0)
      expect(save.stderr).toContain('could not write the saved state')
      expect(save.stderr).toContain('no space left on the device')
      expect(await leftovers()).toEqual([])
      expect(await guestStatus()).toBe('running')
    } finally {
      await rm(filler, {force: true})
    }
    expect(await names()).toEqual(snapshotsBefore)
    expect(await qemuPid()).toBe(pid)
    expect(await ssh('echo alive')).toBe('alive')
    // With room again, the same save works.
    const again = await box(env, ['snapshot', 'save', 'full'])
    expect(again.exitCode, again.stderr).toBe(0)
    expect(await names()).toEqual([...snapshotsBefore, 'full'])
  })

  it('Ctrl-C while saving: interrupted, nothing half-written, the same QEMU goes on running', async () => {
    const pid = await qemuPid()
    const snapshotsBefore = await names()
    const saving = spawnBox(['snapshot', 'save', 'cut'])
    // The state streams into its .partial: the guest is paused, the save half done.
    await waitFor('the state file being written', async () => (await leftovers()).length > 0)
    interruptGroup(saving.pid!)
    const result = await saving
    expect(result.exitCode, result.stderr).toBe(130)
    expect(result.stderr).toContain('interrupted')
    expect(await leftovers()).toEqual([])
    expect(await names()).toEqual(snapshotsBefore)
    expect(await qemuPid()).toBe(pid)
    expect(await guestStatus()).toBe('running')
    expect(await ssh('echo alive')).toBe('alive')
  })

  it('Ctrl-C while restoring: no QEMU left, the chain intact, and the snapshot still restores', async () => {
    const snapshotsBefore = await names()
    expect(snapshotsBefore).toContain('full')
    const restoring = spawnBox(['snapshot', 'restore', 'full'])
    // The new QEMU listens for the state: the old one is gone, the new one not yet running.
    await waitFor('the new QEMU waiting for the state', () => existsSync(join(stateDir, 'migration.sock')))
    interruptGroup(restoring.pid!)
    const result = await restoring
    expect(result.exitCode, result.stderr).toBe(130)
    expect(result.stderr).toContain('interrupted')
    expect(await qemuProcessesMentioning(stateDir)).toEqual([])
    const status = JSON.parse((await box(env, ['status', '--json'])).stdout) as Array<{state: string}>
    expect(status[0]!.state).toBe('poweroff')
    expect(await names()).toEqual(snapshotsBefore)
    const again = await box(env, ['snapshot', 'restore', 'full'])
    expect(again.exitCode, again.stderr).toBe(0)
    expect(await ssh('echo alive')).toBe('alive')
  })

  it('two snapshot commands at once on one machine: the second waits for the machine lock, then is refused by name', async () => {
    const snapshotsBefore = await names()
    const first = spawnBox(['snapshot', 'save', 'first'])
    const lock = join(stateDir, 'lock')
    await waitFor(
      'the first command to hold the machine lock',
      async () => (await readFile(lock, 'utf8').catch(() => '')).trim() === String(first.pid),
    )
    // Held there for longer than the second one waits (3 s).
    process.kill(-first.pid!, 'SIGSTOP')
    try {
      const second = await box(env, ['snapshot', 'save', 'second'])
      expect(second.exitCode).not.toBe(0)
      expect(second.stderr).toContain(
        `machine default is busy: another box command (pid ${first.pid}) is working on it`,
      )
    } finally {
      process.kill(-first.pid!, 'SIGCONT')
    }
    const result = await first
    expect(result.exitCode, result.stderr).toBe(0)
    expect(await names()).toEqual([...snapshotsBefore, 'first'])
    expect(await ssh('echo alive')).toBe('alive')
  })
})
