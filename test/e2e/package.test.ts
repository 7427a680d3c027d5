import {createHash} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {mkdir, mkdtemp, readdir, readFile, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ensureBox} from '../../src/builder/index.js'
import {copyImageRange, lvRangesOnPv, readLvmOnDisk} from '../../src/lib/box/disk-image.js'
import {findOnPath} from '../../src/lib/core/exec.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {testCacheDir} from '../support/cache.js'
import {BIN, box, type CliEnv, sshStdout} from '../support/cli.js'

/**
 * The maintainer's loop on the reference box: `up --base` → change the origin and
 * regenerate its initramfs with static/makeinitrd, as after a kernel update →
 * `package --halt` → `add` under a new name → `up` elsewhere → the change is there after
 * a resnap boot, and resnap still throws away later changes. Plus the refusals, Vagrant
 * accepting the output, and box booting a box laid out as vagrant-libvirt's example box.
 * Guests boot one at a time (about a minute each under TCG).
 */

const MARKER = 'changed in the origin by the maintainer'
/** A boot under TCG on a busy 2-core host: about a minute, sometimes several. */
const BOOT_TIMEOUT = 420_000
const vagrantInstalled = (await findOnPath('vagrant')) !== undefined

async function sha256(file: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

async function qemuProcessesMentioning(text: string): Promise<string[]> {
  const {stdout} = await execa('ps', ['-eo', 'pid=,args='], {reject: false})
  return stdout.split('\n').filter((line) => line.includes('qemu-system') && line.includes(text))
}

/** The names of a machine's snapshots (box snapshot list --json). */
async function snapshotNames(env: CliEnv): Promise<string[]> {
  const listed = await box(env, ['snapshot', 'list', '--json'])
  expect(listed.exitCode, listed.stderr).toBe(0)
  const [entry] = JSON.parse(listed.stdout) as Array<{snapshots: Array<{name: string}>}>
  return entry!.snapshots.map((snapshot) => snapshot.name)
}

describe('box package: the maintainer loop on the reference box', () => {
  let root: string
  let origin: CliEnv
  let consumer: CliEnv
  let packaged: string
  let catalog: string
  /** sha256 of the origin's initrd after makeinitrd: the one the packaged box must ship. */
  let regeneratedInitrd = ''

  beforeAll(async () => {
    const {path: boxFile} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {cacheDir: testCacheDir()})
    root = await mkdtemp(join(tmpdir(), 'box-package-'))
    const dataDir = join(root, 'data')
    origin = {cwd: join(root, 'origin'), dataDir, cacheDir: testCacheDir()}
    consumer = {cwd: join(root, 'consumer'), dataDir, cacheDir: testCacheDir()}
    await mkdir(origin.cwd)
    await mkdir(consumer.cwd)
    await writeFile(join(origin.cwd, 'Boxfile'), 'box: reference\nmemory: 1024\ncpus: 2\n')
    await writeFile(join(consumer.cwd, 'Boxfile'), 'box: reference-next\nmemory: 1024\ncpus: 2\n')
    packaged = join(root, 'out', 'reference-0.2.0.box')
    catalog = join(root, 'out', 'catalog.json')
    await mkdir(join(root, 'out'))
    const added = await box(origin, ['add', 'reference', boxFile])
    expect(added.exitCode, added.stderr).toBe(0)
  })

  afterAll(async () => {
    for (const env of [origin, consumer]) if (env) await box(env, ['destroy', '-f'])
    if (root) await rm(root, {recursive: true, force: true})
  })

  it('refuses an unknown machine and a machine never created', async () => {
    const unknown = await box(origin, ['package', 'nosuch'])
    expect(unknown.exitCode).toBe(2)
    expect(unknown.stderr).toMatch(/unknown machine "nosuch"/)
    const never = await box(origin, ['package'])
    expect(never.exitCode).toBe(2)
    expect(never.stderr).toMatch(/machine default has never been created/)
    expect(never.stderr).toContain('box up --base')
  })

  it(
    'up --base boots the origin; a change there; package refuses a running machine',
    async () => {
      const up = await box(origin, ['up', '--base'])
      expect(up.exitCode, up.stderr).toBe(0)
      const changed = await box(origin, [
        'ssh',
        '-c',
        `findmnt -no SOURCE / && echo '${MARKER}' | sudo tee /etc/box-package-marker >/dev/null`,
      ])
      expect(changed.exitCode, changed.stderr).toBe(0)
      expect(changed.stdout.trim()).toMatch(/-root$/)
      // The initramfs regenerated in the origin as after a kernel update, through
      // static/makeinitrd (which ends in `update-initramfs -u -k all`): the round trip below
      // boots that initrd, and its resnap boots still reset /.
      const initrdTime = 'stat -c %Y /boot/initrd.img-$(uname -r)'
      const before = await box(origin, ['ssh', '-c', initrdTime])
      for (const source of [join(PROJECT_ROOT, 'static', 'makeinitrd'), join(PROJECT_ROOT, 'initramfs')]) {
        const uploaded = await box(origin, ['upload', source, '/tmp'])
        expect(uploaded.exitCode, uploaded.stderr).toBe(0)
      }
      const regenerated = await box(origin, [
        'ssh',
        '-c',
        `sleep 1; sudo sh /tmp/makeinitrd /tmp/initramfs && ${initrdTime} && sha256sum /boot/initrd.img-$(uname -r)`,
      ])
      expect(regenerated.exitCode, regenerated.stderr).toBe(0)
      expect(regenerated.stdout).toContain('makeinitrd: resnap installed')
      const [time, sum] = regenerated.stdout.trim().split('\n').slice(-2)
      expect(Number(time)).toBeGreaterThan(Number(before.stdout.trim()))
      regeneratedInitrd = sum!.split(' ')[0]!
      const refused = await box(origin, ['package', '-o', packaged])
      expect(refused.exitCode).toBe(2)
      expect(refused.stderr).toMatch(/machine default is running/)
      expect(refused.stderr).toContain('box halt default')
      expect(refused.stderr).toContain('--halt')
    },
    BOOT_TIMEOUT,
  )

  it(
    'a snapshot saved on the running origin, then one file removed and one added after it',
    async () => {
      await sshStdout(
        origin,
        'echo kept | sudo tee /etc/box-before-snapshot /etc/box-removed-after-snapshot >/dev/null && sync',
      )
      const saved = await box(origin, ['snapshot', 'save', 'before-package'])
      expect(saved.exitCode, saved.stderr).toBe(0)
      await sshStdout(
        origin,
        'sudo rm /etc/box-removed-after-snapshot && echo after | sudo tee /etc/box-after-snapshot >/dev/null && sync',
      )
      expect((await snapshotNames(origin)).sort()).toEqual(['before-package'])
    },
    BOOT_TIMEOUT,
  )

  it(
    'package --halt writes a Vagrant-format box, prints its sha256 and adds it to a catalog',
    async () => {
      const url = `file://${packaged}`
      const info = join(root, 'info.json')
      const notes = join(root, 'NOTES.txt')
      await writeFile(info, JSON.stringify({author: 'box tests'}))
      await writeFile(notes, 'shipped with the box\n')
      const result = await box(origin, [
        'package',
        '--halt',
        '-o',
        packaged,
        '--version',
        '0.2.0',
        '--catalog',
        catalog,
        '--url',
        url,
        '--info',
        info,
        '--include',
        notes,
      ])
      expect(result.exitCode, result.stderr).toBe(0)
      expect(result.stderr).toMatch(/the origin was changed/)
      const digest = await sha256(packaged)
      expect(result.stdout).toContain(`sha256 ${digest}`)
      expect(JSON.parse((await box(origin, ['status', '--json'])).stdout)[0].state).toBe('poweroff')
      expect(await qemuProcessesMentioning(origin.cwd)).toEqual([])

      const listing = (await execa('tar', ['--zstd', '-tf', packaged])).stdout.split('\n')
      expect(listing[0]).toBe('metadata.json')
      expect(listing).toEqual(
        expect.arrayContaining(['Vagrantfile', 'info.json', 'box.img', 'vmlinuz', 'initrd.img', 'include/NOTES.txt']),
      )
      const shippedInitrd = await execa('sh', ['-c', 'tar --zstd -xOf "$1" initrd.img | sha256sum', 'sh', packaged])
      expect(shippedInitrd.stdout.split(' ')[0]).toBe(regeneratedInitrd)
      expect((await execa('tar', ['--zstd', '-xOf', packaged, 'include/NOTES.txt'])).stdout).toBe(
        'shipped with the box',
      )
      const metadata = JSON.parse((await execa('tar', ['--zstd', '-xOf', packaged, 'metadata.json'])).stdout)
      expect(metadata).toMatchObject({
        provider: 'libvirt',
        format: 'qcow2',
        virtual_size: 8,
        box: {version: '0.2.0', user: 'box', kernel: 'vmlinuz', lvm: {vg: 'box', snapshot: 'root_snap'}},
      })

      const written = JSON.parse(await readFile(catalog, 'utf8'))
      expect(written).toEqual({
        name: 'reference',
        versions: [{version: '0.2.0', providers: [{name: 'libvirt', url, checksum_type: 'sha256', checksum: digest}]}],
      })
    },
    BOOT_TIMEOUT,
  )

  it('the box holds the disk as it is now and none of the snapshots: no snapshot member, layer or state; the changes made after it are in', async () => {
    const listing = (await execa('tar', ['--zstd', '-tf', packaged])).stdout.split('\n').filter(Boolean)
    expect(listing.sort()).toEqual(
      [
        'Vagrantfile',
        'box.img',
        'include',
        'include/NOTES.txt',
        'info.json',
        'initrd.img',
        'metadata.json',
        'vmlinuz',
      ].sort(),
    )
    const unpacked = join(root, 'from-origin')
    await mkdir(unpacked)
    try {
      await execa('tar', ['--zstd', '-xf', packaged, '-C', unpacked, 'box.img'])
      const image = join(unpacked, 'box.img')
      // One standalone qcow2: no backing layer (the snapshot's frozen one), no internal snapshots.
      const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', image])).stdout)
      expect(info['backing-filename']).toBeUndefined()
      expect(info.snapshots).toBeUndefined()
      expect((await execa('qemu-img', ['snapshot', '-l', image])).stdout).toBe('')
      const lvm = (await readLvmOnDisk(image, 'qcow2'))!
      const [rootRange] = lvRangesOnPv(lvm.metadata, 'box', 'root', lvm.pvUuid)!
      const rootFs = join(unpacked, 'root.raw')
      await copyImageRange(image, 'qcow2', lvm.pvOffset + rootRange!.offset, rootRange!.size, rootFs)
      const look = async (path: string) => execa('debugfs', ['-R', `stat ${path}`, rootFs], {reject: false})
      for (const present of ['/etc/box-before-snapshot', '/etc/box-after-snapshot']) {
        const found = await look(present)
        expect(found.stderr).not.toMatch(/not found/)
        expect(found.stdout, present).toMatch(/^Inode: \d+/m)
      }
      // In the snapshot, removed after it: the snapshot's disk would still have it.
      expect((await look('/etc/box-removed-after-snapshot')).stderr).toMatch(/not found/)
    } finally {
      await rm(unpacked, {recursive: true, force: true})
    }
    // The machine keeps its snapshot: packaging neither ships nor drops it.
    expect(await snapshotNames(origin)).toEqual(['before-package'])
  })

  it('refuses an existing output unless --force', async () => {
    const refused = await box(origin, ['package', '-o', packaged])
    expect(refused.exitCode).toBe(2)
    expect(refused.stderr).toMatch(/already exists/)
    expect(refused.stderr).toContain('--force')
  })

  it('Ctrl-C mid-way leaves nothing at the output path', async () => {
    const output = join(root, 'out', 'interrupted.box')
    const child = execa(BIN, ['package', '-o', output, '--compression', 'gzip', '--no-color'], {
      cwd: origin.cwd,
      reject: false,
      env: {BOX_DATA_DIR: origin.dataDir, BOX_CACHE_DIR: origin.cacheDir},
    })
    let stderr = ''
    child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    for (let i = 0; i < 300 && !/compressing/.test(stderr); i++) await sleep(100)
    expect(stderr).toMatch(/compressing/)
    child.kill('SIGINT')
    const result = await child
    expect(result.exitCode).toBe(130)
    expect(await readdir(join(root, 'out'))).toEqual(
      expect.not.arrayContaining([expect.stringMatching(/^interrupted|^\.box-package-/)]),
    )
  })

  it('refuses when the output filesystem is too small, before starting', async (context) => {
    const small = join(root, 'small')
    await mkdir(small)
    const mounted = await execa('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', small], {reject: false})
    if (mounted.exitCode !== 0) context.skip() // needs root to mount a small tmpfs
    try {
      const result = await box(origin, ['package', '-o', join(small, 'x.box')])
      expect(result.exitCode).toBe(1)
      expect(result.stderr).toMatch(/not enough free space in .*small/)
      expect(await readdir(small)).toEqual([])
    } finally {
      await execa('umount', [small], {reject: false})
    }
  })

  it("the output's disk filling up mid-package (another writer took the space): a clear error, nothing left", async (context) => {
    const disk = join(origin.cwd, '.box', 'machines', 'default', 'disk.qcow2')
    const measured = JSON.parse((await execa('qemu-img', ['measure', '--output=json', '-O', 'qcow2', disk])).stdout)
    // Room for package's own check (twice the flattened disk and 64 MiB), no more.
    const size = 2 * Number(measured.required) + 128 * 1024 * 1024
    const filling = join(root, 'filling')
    await mkdir(filling)
    const mounted = await execa('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', filling], {reject: false})
    if (mounted.exitCode !== 0) context.skip() // needs root to mount a tmpfs
    try {
      const child = execa(BIN, ['package', '-o', join(filling, 'x.box'), '--compression', 'gzip', '--no-color'], {
        cwd: origin.cwd,
        reject: false,
        env: {BOX_DATA_DIR: origin.dataDir, BOX_CACHE_DIR: origin.cacheDir},
      })
      let stderr = ''
      child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
      for (let i = 0; i < 600 && !/compressing/.test(stderr); i++) await sleep(100)
      expect(stderr).toMatch(/compressing/)
      const avail = Number((await execa('df', ['--output=avail', '-B1', filling])).stdout.split('\n')[1])
      await execa('fallocate', ['-l', String(avail), join(filling, 'other-writer')], {reject: false})
      const result = await child
      expect(result.exitCode, String(result.stderr)).toBe(1)
      expect(String(result.stderr)).toMatch(/no space left/i)
      expect(String(result.stderr)).not.toMatch(/bug in box/i)
      expect(await readdir(filling)).toEqual(['other-writer'])
    } finally {
      await execa('umount', [filling], {reject: false})
    }
  })

  it(
    'round trip: the new box has the change after a resnap boot, and resnap still throws later changes away',
    async () => {
      const added = await box(consumer, ['add', 'reference-next', packaged])
      expect(added.exitCode, added.stderr).toBe(0)
      expect(added.stdout).toContain('reference-next 0.2.0')
      const up = await box(consumer, ['up'])
      expect(up.exitCode, up.stderr).toBe(0)
      const first = await box(consumer, [
        'ssh',
        '-c',
        'findmnt -no SOURCE /; cat /etc/box-package-marker; echo later | sudo tee /etc/box-later-change >/dev/null',
      ])
      expect(first.exitCode, first.stderr).toBe(0)
      expect(first.stdout).toMatch(/root_snap\n/)
      expect(first.stdout).toContain(MARKER)
      const resnap = await box(consumer, ['resnap'])
      expect(resnap.exitCode, resnap.stderr).toBe(0)
      const after = await box(consumer, [
        'ssh',
        '-c',
        'cat /etc/box-package-marker; test ! -e /etc/box-later-change && echo later-change-gone',
      ])
      expect(after.exitCode, after.stderr).toBe(0)
      expect(after.stdout).toContain(MARKER)
      expect(after.stdout).toContain('later-change-gone')

      // Packaging this normal (snapshot) machine ships the origin as it is, and says so.
      expect((await box(consumer, ['ssh', '-c', 'echo x | sudo tee /etc/box-snapshot-only >/dev/null'])).exitCode).toBe(
        0,
      )
      const output = join(root, 'out', 'from-snapshot.box')
      const again = await box(consumer, ['package', '--halt', '-o', output])
      expect(again.exitCode, again.stderr).toBe(0)
      expect(again.stderr).toMatch(
        /the origin is as reference-next 0\.2\.0 shipped it: the snapshot's changes are not packaged/,
      )
      const unpacked = join(root, 'from-snapshot')
      await mkdir(unpacked)
      await execa('tar', ['--zstd', '-xf', output, '-C', unpacked, 'box.img'])
      const image = join(unpacked, 'box.img')
      const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', image])).stdout)
      expect(info['backing-filename']).toBeUndefined()
      const lvm = (await readLvmOnDisk(image, 'qcow2'))!
      const [rootRange] = lvRangesOnPv(lvm.metadata, 'box', 'root', lvm.pvUuid)!
      await copyImageRange(
        image,
        'qcow2',
        lvm.pvOffset + rootRange!.offset,
        rootRange!.size,
        join(unpacked, 'root.raw'),
      )
      const look = async (path: string) =>
        (await execa('debugfs', ['-R', `stat ${path}`, join(unpacked, 'root.raw')], {reject: false})).stderr
      expect(await look('/etc/box-package-marker')).not.toMatch(/not found/)
      expect(await look('/etc/box-snapshot-only')).toMatch(/not found/)
      await rm(unpacked, {recursive: true, force: true})
      expect((await box(consumer, ['destroy', '-f'])).exitCode).toBe(0)
    },
    BOOT_TIMEOUT * 2,
  )

  it.runIf(vagrantInstalled)(
    'vagrant box add accepts the box and the catalog',
    async () => {
      const vagrantHome = join(root, 'vagrant-home')
      const env = {
        VAGRANT_HOME: vagrantHome,
        HOME: join(root, 'vagrant-user'),
        VAGRANT_CHECKPOINT_DISABLE: '1',
        VAGRANT_DEFAULT_PROVIDER: 'libvirt',
      }
      await mkdir(env.HOME, {recursive: true})
      const fromFile = await execa('vagrant', ['box', 'add', '--name', 'box-test/packaged', packaged], {
        env,
        reject: false,
        timeout: 300_000,
      })
      expect(fromFile.exitCode, fromFile.stderr + fromFile.stdout).toBe(0)
      const fromCatalog = await execa('vagrant', ['box', 'add', `file://${catalog}`], {
        env,
        reject: false,
        timeout: 300_000,
      })
      expect(fromCatalog.exitCode, fromCatalog.stderr + fromCatalog.stdout).toBe(0)
      const list = await execa('vagrant', ['box', 'list'], {env, reject: false})
      expect(list.stdout).toMatch(/box-test\/packaged\s+\(libvirt, 0\)/)
      expect(list.stdout).toMatch(/reference\s+\(libvirt, 0\.2\.0\)/)
    },
    600_000,
  )

  it(
    "box adds and boots a box laid out as vagrant-libvirt's example box (grub boot, no box key)",
    async () => {
      // vagrant-libvirt's example_box: metadata.json with only Vagrant's keys, box.img, Vagrantfile; tar + gzip.
      const example = join(root, 'example')
      await mkdir(example)
      await execa('tar', ['--zstd', '-xf', packaged, '-C', example, 'box.img'])
      await writeFile(
        join(example, 'metadata.json'),
        JSON.stringify({provider: 'libvirt', format: 'qcow2', virtual_size: 8}),
      )
      await writeFile(
        join(example, 'Vagrantfile'),
        'Vagrant.configure("2") do |config|\n  config.vm.provider :libvirt do |libvirt|\n    libvirt.driver = "kvm"\n  end\nend\n',
      )
      const exampleBox = join(root, 'out', 'example.box')
      await execa('tar', ['-czf', exampleBox, '-C', example, 'metadata.json', 'Vagrantfile', 'box.img'])
      await rm(example, {recursive: true, force: true})

      const project: CliEnv = {...consumer, cwd: join(root, 'example-project')}
      await mkdir(project.cwd)
      // The reference image's login user is box (a real vagrant-libvirt box has vagrant; both take the insecure key).
      await writeFile(join(project.cwd, 'Boxfile'), 'box: example\nmemory: 1024\ncpus: 2\nssh:\n  username: box\n')
      try {
        const added = await box(project, ['add', 'example', exampleBox])
        expect(added.exitCode, added.stderr).toBe(0)
        expect(added.stdout).toMatch(/example 0 \(libvirt\)/)
        const up = await box(project, ['up'])
        expect(up.exitCode, up.stderr).toBe(0)
        const inside = await box(project, ['ssh', '-c', 'cat /proc/cmdline; cat /etc/box-package-marker'])
        expect(inside.exitCode, inside.stderr).toBe(0)
        expect(inside.stdout).toMatch(/BOOT_IMAGE=/) // grub from the disk, not direct kernel boot
        expect(inside.stdout).toContain(MARKER)
      } finally {
        await box(project, ['destroy', '-f'])
      }
      expect(await qemuProcessesMentioning(project.cwd)).toEqual([])
    },
    BOOT_TIMEOUT,
  )

  it(
    'QEMU killed mid-package (while package --halt trims and halts): the box is still written, with a warning, and QEMU is gone',
    async () => {
      const up = await box(consumer, ['up'])
      expect(up.exitCode, up.stderr).toBe(0)
      const output = join(root, 'out', 'killed.box')
      const child = execa(BIN, ['package', '--halt', '-o', output, '--compression', 'gzip', '--no-color'], {
        cwd: consumer.cwd,
        reject: false,
        env: {BOX_DATA_DIR: consumer.dataDir, BOX_CACHE_DIR: consumer.cacheDir},
      })
      let stderr = ''
      child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
      for (let i = 0; i < 300 && !/trimming filesystems and halting/.test(stderr); i++) await sleep(100)
      expect(stderr).toMatch(/trimming filesystems and halting/)
      const pid = Number.parseInt(
        await readFile(join(consumer.cwd, '.box', 'machines', 'default', 'qemu.pid'), 'utf8'),
        10,
      )
      process.kill(pid, 'SIGKILL')
      const result = await child
      expect(result.exitCode, String(result.stderr)).toBe(0)
      expect(String(result.stderr)).toMatch(/QEMU died before the guest halted cleanly/)
      expect((await execa('tar', ['-tzf', output])).stdout.split('\n')[0]).toBe('metadata.json')
      expect(await readdir(join(root, 'out'))).toEqual(
        expect.not.arrayContaining([expect.stringMatching(/^\.box-package-/)]),
      )
      expect(JSON.parse((await box(consumer, ['status', '--json'])).stdout)[0].state).toBe('poweroff')
      expect(await qemuProcessesMentioning(consumer.cwd)).toEqual([])
      await rm(output, {force: true})
    },
    BOOT_TIMEOUT,
  )
})
