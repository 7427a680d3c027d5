import {mkdtemp, readdir, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ensureBox} from '../../src/builder/index.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {sshRun} from '../../src/lib/machine/ssh.js'
import {startFreshWorker, type FreshWorker, type WorkerSpec} from '../../src/lib/machine/worker.js'
import {testCacheDir} from '../support/cache.js'
import {box} from '../support/cli.js'

async function qemuProcessesMentioning(text: string): Promise<string[]> {
  const {stdout} = await execa('pgrep', ['-af', 'qemu-system'], {reject: false})
  return stdout.split('\n').filter((line) => line.includes(text))
}

describe('fresh workers from a ready state', {timeout: 600_000}, () => {
  let root: string
  let dataDir: string
  let cacheDir: string
  const workers: FreshWorker[] = []
  const spec: WorkerSpec = {
    box: {name: 'reference'},
    cpus: 2,
    memoryMiB: 1024,
    network: true,
    setup: ['echo prepared > /root/setup-ran'],
  }

  beforeAll(async () => {
    const {path: boxFile} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {cacheDir: testCacheDir()})
    root = await mkdtemp(join(tmpdir(), 'box-worker-'))
    dataDir = join(root, 'data')
    // A cache of its own: the ready state is made here, once, by the first worker.
    cacheDir = join(root, 'cache')
    const added = await box({cwd: root, dataDir, cacheDir}, ['add', 'reference', boxFile])
    expect(added.exitCode, added.stderr).toBe(0)
  })

  afterAll(async () => {
    for (const worker of workers) await worker.destroy().catch(() => {})
    if (root) await rm(root, {recursive: true, force: true})
  })

  it('the first worker makes the ready state (setup ran in it); the next one restores it, pristine', async () => {
    const first = await startFreshWorker(spec, {dataDir, cacheDir})
    workers.push(first)
    expect(first.timings.builtReadyState).toBe(true)
    expect((await sshRun(first.ssh!, ['sudo', 'cat', '/root/setup-ran'])).stdout).toBe('prepared')
    await sshRun(first.ssh!, ['sudo', 'sh', '-c', 'echo mine > /root/worker-file'])
    const bootId = (await sshRun(first.ssh!, ['cat', '/proc/sys/kernel/random/boot_id'])).stdout

    const second = await startFreshWorker(spec, {dataDir, cacheDir})
    workers.push(second)
    expect(second.timings.builtReadyState).toBe(false)
    expect(await second.askAgent('ping')).toBe('pong')
    expect((await sshRun(second.ssh!, ['sudo', 'ls', '/root'])).stdout).toBe('setup-ran')
    // The same saved boot, not a new one, with the host's time.
    expect((await sshRun(second.ssh!, ['cat', '/proc/sys/kernel/random/boot_id'])).stdout).toBe(bootId)
    const guest = Number((await sshRun(second.ssh!, ['date', '+%s'])).stdout)
    expect(Math.abs(guest - Date.now() / 1000)).toBeLessThan(3)
    expect(second.timings.diskBytesBeforeRun).toBeLessThan(1024 * 1024)
    expect(second.stateDir).not.toBe(first.stateDir)
  })

  it('destroy stops the worker and deletes its folder; a second destroy is harmless', async () => {
    for (const worker of workers.splice(0)) {
      await worker.destroy()
      await worker.destroy()
      expect(await qemuProcessesMentioning(worker.stateDir)).toEqual([])
    }
    expect(await readdir(join(cacheDir, 'workers'))).toEqual([])
  })
})
