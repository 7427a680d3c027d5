import {mkdir, mkdtemp, readFile, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {extractBoxArchive} from '../../src/lib/box/archive.js'
import {BoxMetadataSchema} from '../../src/lib/box/metadata.js'
import type {BootChoice} from '../../src/lib/box/resnap.js'
import {installPrivateKey, sshRun, waitForSsh, type SshTarget} from '../../src/lib/machine/ssh.js'
import {resolveAccel} from '../../src/providers/qemu/accel.js'
import type {BoxImage} from '../../src/providers/provider.js'
import {
  bootInstance,
  createOverlay,
  instanceFiles,
  type Booted,
  type InstanceFiles,
} from '../../src/providers/qemu/instance.js'
import {isAlive, runningPid, stopQemu, waitForExit} from '../../src/providers/qemu/process.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {testCacheDir} from './cache.js'

export interface GuestBootOptions {
  firmwareBoot?: boolean
  /** Another lvsize= on the kernel command line (direct kernel boot): a resnap boot then recreates the snapshot. */
  lvsize?: string
}

function withSnapshotSize(box: BoxImage, lvsize: string): BoxImage {
  const info = box.metadata.box
  if (!info?.lvm) throw new Error('the box has no LVM layout')
  return {...box, metadata: {...box.metadata, box: {...info, lvm: {...info.lvm, snapshot_size: lvsize}}}}
}

/**
 * One real QEMU guest from a .box, booted and halted by the tests of one file:
 * the box is unpacked once, the machine is a linked clone, ssh uses the box's
 * documented insecure key.
 */
export class TestGuest {
  readonly files: InstanceFiles
  target?: SshTarget
  lastBootMs = 0
  private pid?: number

  private constructor(
    readonly workDir: string,
    readonly box: BoxImage,
    private readonly keyFile: string,
  ) {
    this.files = instanceFiles(join(workDir, 'machine'))
  }

  static async fromBox(boxFile: string): Promise<TestGuest> {
    const workDir = await mkdtemp(join(tmpdir(), 'box-guest-'))
    const boxDir = join(workDir, 'box')
    await extractBoxArchive({file: boxFile, dest: boxDir})
    const metadata = BoxMetadataSchema.parse(JSON.parse(await readFile(join(boxDir, 'metadata.json'), 'utf8')))
    const keyFile = await installPrivateKey(join(PROJECT_ROOT, 'static', 'insecure_key'), join(workDir, 'key'))
    const guest = new TestGuest(workDir, {dir: boxDir, metadata}, keyFile)
    await mkdir(guest.files.stateDir, {recursive: true})
    await createOverlay(guest.box, guest.files.overlay)
    return guest
  }

  /** Start QEMU and return at once (the guest is still in its firmware or kernel). */
  async start(choice: BootChoice, options: GuestBootOptions = {}): Promise<Booted> {
    const {accel} = await resolveAccel({cacheDir: testCacheDir()})
    const booted = await bootInstance({
      name: 'test',
      files: this.files,
      box: options.lvsize ? withSnapshotSize(this.box, options.lvsize) : this.box,
      accel,
      cpus: 2,
      memoryMiB: 1024,
      choice,
      firmwareBoot: options.firmwareBoot,
    })
    this.pid = booted.pid
    this.target = undefined
    return booted
  }

  async boot(choice: BootChoice, options: GuestBootOptions = {}): Promise<SshTarget> {
    const started = Date.now()
    const booted = await this.start(choice, options)
    this.target = {
      host: '127.0.0.1',
      port: booted.sshPort,
      user: this.box.metadata.box?.user ?? 'box',
      keyFile: this.keyFile,
      controlPath: join(this.workDir, 'ssh.ctl'),
    }
    await waitForSsh(this.target, {
      timeoutMs: 240_000,
      serialLog: this.files.serialLog,
      isAlive: () => isAlive(booted.pid),
    })
    this.lastBootMs = Date.now() - started
    return this.target
  }

  /** A power cut: SIGKILL to QEMU, so nothing the guest has not flushed to its disk reaches it. */
  async powerCut(): Promise<void> {
    if (this.pid === undefined) throw new Error('guest not started')
    try {
      process.kill(this.pid, 'SIGKILL')
    } catch {}
    if (!(await waitForExit(this.pid, 10_000))) throw new Error(`QEMU ${this.pid} outlived SIGKILL`)
    this.pid = undefined
    this.target = undefined
  }

  /** Run a shell script as root in the guest; returns its stdout. */
  async root(script: string): Promise<string> {
    if (!this.target) throw new Error('guest not booted')
    const {stdout} = await sshRun(this.target, ['sudo', 'sh', '-eu'], {input: script, timeoutMs: 120_000})
    return stdout
  }

  async serialLog(): Promise<string> {
    return readFile(this.files.serialLog, 'utf8').catch(() => '')
  }

  async halt(): Promise<void> {
    await stopQemu({pidFile: this.files.pidFile, qmpSocket: this.files.qmpSocket, timeoutMs: 60_000})
    this.target = undefined
  }

  async isRunning(): Promise<boolean> {
    return (await runningPid(this.files.pidFile, this.files.qmpSocket)) !== undefined
  }

  async dispose(): Promise<void> {
    await stopQemu({pidFile: this.files.pidFile, qmpSocket: this.files.qmpSocket, timeoutMs: 0, force: true})
    await rm(this.workDir, {recursive: true, force: true})
  }
}
