/**
 * `box doctor` through the built CLI with a PATH made for the test: a folder of links to
 * the host's real tools, minus the ones a test hides. Its lines, its --json report and its
 * exit code are checked against what the hidden tool changes (BOX_ACCEL names the
 * accelerator, so no probe guest starts; only the --reprobe test runs QEMU's tiny probe guest,
 * a second or two, 3 s more for a KVM that hangs).
 */
import {mkdir, readFile, symlink, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {makeTempDir} from '../fixtures/boxes.js'
import {BIN} from '../support/cli.js'

/** Every program doctor looks for (the doctor's own list is not used to build expectations). */
const TOOLS = [
  'qemu-system-x86_64',
  'qemu-img',
  'ssh',
  'ssh-keygen',
  'zstd',
  'xz',
  'bzip2',
  'xorriso',
  'debootstrap',
  'mke2fs',
  'debugfs',
  'busybox',
  'cpio',
  'ansible-playbook',
  'rsync',
  'sbatch',
  'VBoxManage',
]

interface ToolLine {
  command: string
  found: boolean
  required: boolean
  package: string
  version?: string
}

describe('box doctor with tools hidden from PATH', () => {
  let dir: string
  let cleanup: () => Promise<void>
  /** Where each tool is on the real PATH (absent: not installed here). */
  const located = new Map<string, string>()

  /** A PATH of links to the real tools but `hidden`, plus node (the launcher needs it). */
  async function pathWithout(name: string, hidden: string[]): Promise<string> {
    const bin = join(dir, name)
    await mkdir(bin)
    for (const [tool, path] of located) if (!hidden.includes(tool)) await symlink(path, join(bin, tool))
    await symlink(process.execPath, join(bin, 'node'))
    return bin
  }

  /** box doctor; `probe`: without BOX_ACCEL, so the accelerator comes from the cache or a probe guest, in `probe`'s cache dir. */
  function doctor(path: string, args: string[] = [], probe?: {cacheDir: string}) {
    return execa(BIN, ['doctor', ...args], {
      reject: false,
      stdin: 'ignore',
      extendEnv: false,
      env: {
        PATH: path,
        HOME: dir,
        BOX_CACHE_DIR: probe?.cacheDir ?? join(dir, 'cache'),
        BOX_DATA_DIR: join(dir, 'data'),
        ...(probe ? {} : {BOX_ACCEL: 'tcg'}),
        NO_COLOR: '1',
      },
    })
  }

  beforeAll(async () => {
    ;({dir, cleanup} = await makeTempDir('box-doctor-'))
    for (const tool of TOOLS) {
      const found = await execa('sh', ['-c', 'command -v "$1"', 'sh', tool], {reject: false})
      if (found.exitCode === 0) located.set(tool, found.stdout.trim())
    }
    // The suite's hosts have box's required tools; without them this test proves nothing.
    for (const tool of ['qemu-system-x86_64', 'qemu-img', 'ssh', 'ssh-keygen', 'zstd', 'mke2fs', 'xz'])
      expect(located.has(tool), `${tool} is not installed on this host`).toBe(true)
  })

  afterAll(async () => {
    await cleanup?.()
  })

  it('every tool there: exit 0, each found one with the version it prints itself', async () => {
    const result = await doctor(await pathWithout('all', []))
    expect(result.exitCode, result.stderr).toBe(0)
    const qemuVersion = (await execa(located.get('qemu-img')!, ['--version'])).stdout.split('\n')[0]!.trim()
    expect(result.stdout).toMatch(
      new RegExp(`^  ok +qemu-img +${qemuVersion.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'),
    )
    for (const tool of located.keys()) expect(result.stdout).toMatch(new RegExp(`^  ok +${tool}( |$)`, 'm'))
    expect(result.stdout).not.toContain('MISSING')
    expect(result.stdout).toContain('acceleration: tcg (BOX_ACCEL)')
    expect(result.stdout).toContain('box is ready to run machines.')
  })

  it('qemu-img hidden: its line says MISSING with the package to install, exit 1', async () => {
    const path = await pathWithout('no-qemu-img', ['qemu-img'])
    const result = await doctor(path)
    expect(result.exitCode, result.stdout).toBe(1)
    expect(result.stdout).toMatch(
      /^ {2}MISSING +qemu-img +install: sudo apt-get install qemu-utils +\(overlays, box images\)$/m,
    )
    expect(result.stdout.match(/MISSING/g)).toHaveLength(1)
    expect(result.stdout).toMatch(/^ {2}ok +qemu-system-x86_64 +QEMU emulator version /m)
    expect(result.stdout).toContain('box cannot run machines until the problems above are fixed.')
    expect(result.stdout).not.toContain('box is ready')

    const json = await doctor(path, ['--json'])
    expect(json.exitCode).toBe(1)
    const report = JSON.parse(json.stdout) as {ok: boolean; tools: ToolLine[]; accel?: {accel: string}}
    expect(report.ok).toBe(false)
    expect(report.tools.find((tool) => tool.command === 'qemu-img')).toEqual({
      command: 'qemu-img',
      found: false,
      required: true,
      package: 'qemu-utils',
      purpose: 'overlays, box images',
    })
    const ssh = report.tools.find((tool) => tool.command === 'ssh')!
    expect(ssh.found).toBe(true)
    // ssh -V prints to stderr: the version is what the tool itself says.
    expect(ssh.version).toBe((await execa(located.get('ssh')!, ['-V'])).stderr.trim().slice(0, 80))
    expect(report.accel?.accel).toBe('tcg')
  })

  it('qemu-system-x86_64 hidden: no acceleration either, exit 1', async () => {
    const result = await doctor(await pathWithout('no-qemu', ['qemu-system-x86_64']))
    expect(result.exitCode).toBe(1)
    expect(result.stdout).toMatch(/^ {2}MISSING +qemu-system-x86_64 +install: sudo apt-get install qemu-system-x86 /m)
    expect(result.stdout).toContain('acceleration: none (qemu-system-x86_64 is missing)')
  })

  it('an optional tool hidden: reported missing, still exit 0', async () => {
    const result = await doctor(await pathWithout('no-xz', ['xz']))
    expect(result.exitCode, result.stdout).toBe(0)
    expect(result.stdout).toMatch(
      /^ {2}missing +xz +install: sudo apt-get install xz-utils +\(xz-compressed boxes, optional\)$/m,
    )
    expect(result.stdout).toContain('box is ready to run machines.')
  })

  it('--reprobe probes the accelerator again instead of using the cached answer', async () => {
    // A probe guest runs (well under a second under TCG; 3 s at most per accelerator that hangs).
    const path = await pathWithout('reprobe', [])
    const probe = {cacheDir: join(dir, 'probe-cache')}
    const accelFile = join(probe.cacheDir, 'accel.json')
    const first = await doctor(path, [], probe)
    expect(first.exitCode, first.stdout).toBe(0)
    const found = /^acceleration: (kvm|tcg) \(probe\)/m.exec(first.stdout)?.[1]
    expect(found, first.stdout).toBeDefined()
    // The cached answer, changed by hand: what a plain doctor reports, and --reprobe does not.
    const cached = JSON.parse(await readFile(accelFile, 'utf8'))
    expect(cached.result.accel).toBe(found)
    await writeFile(accelFile, JSON.stringify({...cached, result: {accel: 'hvf', source: 'probe', attempts: []}}))
    const fromCache = await doctor(path, [], probe)
    expect(fromCache.exitCode, fromCache.stdout).toBe(0)
    expect(fromCache.stdout).toMatch(/^acceleration: hvf \(cache\)$/m)
    const reprobed = await doctor(path, ['--reprobe'], probe)
    expect(reprobed.exitCode, reprobed.stdout).toBe(0)
    expect(reprobed.stdout).toMatch(new RegExp(`^acceleration: ${found} \\(probe\\)`, 'm'))
    // Its answer replaces the cached one.
    const rewritten = JSON.parse(await readFile(accelFile, 'utf8'))
    expect(rewritten.result.accel).toBe(found)
    expect(Date.parse(rewritten.probedAt)).toBeGreaterThan(Date.parse(cached.probedAt))
    expect((await doctor(path, [], probe)).stdout).toMatch(new RegExp(`^acceleration: ${found} \\(cache\\)`, 'm'))
  })

  it('mke2fs hidden: fine for machines, but --jobs fails on it', async () => {
    const path = await pathWithout('no-mke2fs', ['mke2fs'])
    const plain = await doctor(path)
    expect(plain.exitCode, plain.stdout).toBe(0)
    expect(plain.stdout).toMatch(/^ {2}missing +mke2fs /m)
    const jobs = await doctor(path, ['--jobs'])
    expect(jobs.exitCode).toBe(1)
    expect(jobs.stdout).toMatch(
      /^ {2}MISSING +mke2fs +install: sudo apt-get install e2fsprogs +\(box build, job input disks\)$/m,
    )
  })
})
