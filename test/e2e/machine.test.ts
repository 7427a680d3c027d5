import {mkdir, mkdtemp, readFile, readdir, rm, writeFile, copyFile, lstat, stat} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join, relative} from 'node:path'
import {createServer} from 'node:net'
import {once} from 'node:events'
import {setTimeout as sleep} from 'node:timers/promises'
import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ensureBox} from '../../src/builder/index.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {snapshotDataPercent} from '../../src/lib/machine/status.js'
import {QemuProvider} from '../../src/providers/qemu/index.js'
import {testCacheDir} from '../support/cache.js'
import {BIN, box, type CliEnv} from '../support/cli.js'

/** Every QEMU process whose command line mentions `text` (to prove nothing is left running). */
async function qemuProcessesMentioning(text: string): Promise<string[]> {
  const {stdout} = await execa('ps', ['-eo', 'pid=,args='], {reject: false})
  return stdout.split('\n').filter((line) => line.includes('qemu-system') && line.includes(text))
}

/** Every TCP socket a process listens on, as ss prints its local address (e.g. 127.0.0.1:2222). */
async function listeningAddressesOf(pid: number): Promise<string[]> {
  const {stdout} = await execa('ss', ['-Hltnp'])
  return stdout
    .split('\n')
    .filter((line) => line.includes(`pid=${pid},`))
    .map((line) => line.trim().split(/\s+/)[3]!)
}

/** Modes (octal, e.g. "600") of every entry under `dir`, by path relative to it; sockets and FIFOs included. */
async function modesUnder(dir: string): Promise<Record<string, string>> {
  const modes: Record<string, string> = {'.': ((await stat(dir)).mode & 0o777).toString(8)}
  for (const entry of await readdir(dir, {recursive: true, withFileTypes: true})) {
    const path = join(entry.parentPath, entry.name)
    const info = await lstat(path).catch(() => undefined)
    if (info && !info.isSymbolicLink()) modes[relative(dir, path)] = (info.mode & 0o777).toString(8)
  }
  return modes
}

const BOXFILE = `box: reference
memory: 1024
cpus: 2
forwarded_ports:
  - guest: 8080
    host: 0
synced_folders:
  - source: src
    destination: /srv/project
    exclude: ['*.tmp']
provisioners:
  - type: shell
    name: hello
    inline: |
      echo "provisioned as $(id -un) with GREETING=$GREETING"
      echo once >> /persistent/provision-count
    env:
      GREETING: "hi there"
  - type: shell
    name: every-boot
    run: always
    privileged: false
    inline: echo "always runs"
`

describe('machines on QEMU through the CLI', {timeout: 420_000}, () => {
  let env: CliEnv
  let project: string

  beforeAll(async () => {
    const {path: boxFile} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {cacheDir: testCacheDir()})
    const root = await mkdtemp(join(tmpdir(), 'box-machine-'))
    // A comma in the path: QEMU's option lists must escape it.
    project = join(root, 'my,project')
    await mkdir(project)
    env = {cwd: project, dataDir: join(root, 'data'), cacheDir: testCacheDir()}
    const added = await box(env, ['add', 'reference', boxFile])
    expect(added.exitCode, added.stderr).toBe(0)
  })

  afterAll(async () => {
    if (env) {
      await box(env, ['destroy', '-f'])
      await rm(join(env.cwd, '..'), {recursive: true, force: true})
    }
  })

  it('status says not_created before the first up', async () => {
    await writeFile(join(project, 'Boxfile'), BOXFILE.replace('host: 0', 'host: 18080'))
    await mkdir(join(project, 'src', 'lib'), {recursive: true})
    await writeFile(join(project, 'src', 'lib', 'code.txt'), 'version 1\n')
    await writeFile(join(project, 'src', 'scratch.tmp'), 'not synced\n')
    const status = await box(env, ['status', '--json'])
    expect(status.exitCode, status.stderr).toBe(0)
    expect(JSON.parse(status.stdout)).toEqual([expect.objectContaining({name: 'default', state: 'not_created'})])
  })

  it('up boots a linked clone, installs the machine key, runs provisioners, moves a taken port', async () => {
    const squatter = createServer().listen(18080, '127.0.0.1')
    await once(squatter, 'listening')
    const up = await box(env, ['up']).finally(() => squatter.close())
    expect(up.stderr).toMatch(/host port 18080 is taken; guest port 8080 is forwarded from 127\.0\.0\.1:\d+/)
    expect(up.exitCode, up.stderr).toBe(0)
    expect(up.stdout).toContain('default: provisioned as root with GREETING=hi there')
    expect(up.stdout).toContain('default: always runs')
    const disk = join(project, '.box', 'machines', 'default', 'disk.qcow2')
    const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', '-U', disk])).stdout)
    expect(info['backing-filename']).toMatch(/box\.img$/)
    const key = await stat(join(project, '.box', 'machines', 'default', 'id_ed25519'))
    expect(key.mode & 0o777).toBe(0o600)
  })

  it('every key and state file is private: the state dir 0700, keys, records and pins 0600, nothing writable by others', async () => {
    const stateDir = join(project, '.box', 'machines', 'default')
    const modes = await modesUnder(stateDir)
    expect(modes['.']).toBe('700')
    for (const file of ['id_ed25519', 'machine.json', 'known_hosts']) expect(modes[file], file).toBe('600')
    for (const [path, mode] of Object.entries(modes)) {
      // Nothing in it that another user may change (a disk, a socket, a log included).
      expect(Number.parseInt(mode, 8) & 0o022, `${path} is ${mode}`).toBe(0)
      // Anything holding a private key is for its owner alone.
      const info = await stat(join(stateDir, path))
      if (info.isFile() && info.size < 64 * 1024) {
        const text = await readFile(join(stateDir, path), 'latin1')
        if (text.includes('PRIVATE KEY-----')) expect(mode, `${path} holds a private key`).toBe('600')
      }
    }
  })

  it('up logged in twice: once with the insecure key, then with the machine key, whose connection ssh reuses', async () => {
    const fingerprint = async (key: string) => (await execa('ssh-keygen', ['-l', '-f', key])).stdout.split(' ')[1]!
    const log = await box(env, ['ssh', '-c', 'sudo journalctl -b -u ssh.service -o cat --no-pager'])
    expect(log.exitCode, log.stderr).toBe(0)
    const logins = log.stdout.split('\n').filter((line) => line.startsWith('Accepted publickey'))
    expect(logins).toHaveLength(2)
    expect(logins[0]).toContain(await fingerprint(join(PROJECT_ROOT, 'static', 'insecure_key.pub')))
    expect(logins[1]).toContain(await fingerprint(join(project, '.box', 'machines', 'default', 'id_ed25519.pub')))
  })

  it('ssh runs commands with their exit code, and the insecure key no longer works', async () => {
    const ok = await box(env, ['ssh', '-c', 'findmnt -no SOURCE /'])
    expect(ok.exitCode, ok.stderr).toBe(0)
    expect(ok.stdout.trim()).toMatch(/root_snap$/)
    expect((await box(env, ['ssh', '--', 'sh', '-c', 'exit 7'])).exitCode).toBe(7)
    expect((await box(env, ['ssh', '--', 'echo', 'a b;c'])).stdout.trim()).toBe('a b;c')
    const config = (await box(env, ['ssh-config'])).stdout
    const port = /Port (\d+)/.exec(config)![1]!
    const insecure = join(env.cwd, '..', 'insecure')
    await copyFile(join(PROJECT_ROOT, 'static', 'insecure_key'), insecure)
    await execa('chmod', ['600', insecure])
    const loginWith = (key: string) =>
      execa(
        'ssh',
        [
          '-o',
          'BatchMode=yes',
          '-o',
          'ConnectTimeout=30',
          '-o',
          'StrictHostKeyChecking=no',
          '-o',
          'UserKnownHostsFile=/dev/null',
          '-o',
          'IdentitiesOnly=yes',
          '-o',
          'ControlPath=none',
          '-i',
          key,
          '-p',
          port,
          'box@127.0.0.1',
          'true',
        ],
        {reject: false, stdin: 'ignore'},
      )
    // The same login with the machine's key gets in: the port answers and only the key differs.
    const admitted = await loginWith(join(project, '.box', 'machines', 'default', 'id_ed25519'))
    expect(admitted.exitCode, admitted.stderr).toBe(0)
    // sshd refused the key (ssh's 255 with the server's answer), not a connection that failed.
    const denied = await loginWith(insecure)
    expect(denied.exitCode, denied.stderr).toBe(255)
    expect(denied.stderr).toMatch(/box@127\.0\.0\.1: Permission denied \(publickey/)
    expect(denied.stderr).not.toMatch(/Connection (refused|timed out|closed)|kex_exchange_identification/)
    // Nor do Vagrant's published keys, which ~/.ssh starts with (for vagrant up): dropped at the machine key's first login.
    const vagrantKeys = (await readFile(join(PROJECT_ROOT, 'static', 'vagrant-insecure-keys.pub'), 'utf8'))
      .trim()
      .split('\n')
      .map((line) => line.split(' ')[1]!)
    const homeKeys = await box(env, ['ssh', '-c', 'test -f ~/.ssh/authorized_keys && cat ~/.ssh/authorized_keys'])
    expect(homeKeys.exitCode, homeKeys.stderr).toBe(0)
    for (const blob of vagrantKeys) expect(homeKeys.stdout).not.toContain(blob)
  })

  it('synced folders are copied at up and again by box rsync, excludes honoured', async () => {
    const list = async () =>
      (await box(env, ['ssh', '-c', 'cd /srv/project && find . -type f | sort && cat lib/code.txt'])).stdout.trim()
    expect(await list()).toBe('./lib/code.txt\nversion 1')
    await writeFile(join(project, 'src', 'lib', 'code.txt'), 'version 2\n')
    await writeFile(join(project, 'src', 'new.txt'), 'new\n')
    const sync = await box(env, ['rsync', '--json'])
    expect(sync.exitCode, sync.stderr).toBe(0)
    // stdout is one JSON document (JSON.parse takes all of it) saying what happened per machine.
    expect(JSON.parse(sync.stdout)).toEqual([{name: 'default', outcome: 'synced', state: 'running', folders: 1}])
    expect(await list()).toBe('./lib/code.txt\n./new.txt\nversion 2')
  })

  it('status reports running, the forwarded port and the snapshot fill', async () => {
    const status = JSON.parse((await box(env, ['status', '--json'])).stdout)[0]
    expect(status.state).toBe('running')
    expect(status.forwardedPorts).toEqual([expect.objectContaining({guest: 8080, hostIp: '127.0.0.1'})])
    expect(status.forwardedPorts[0].host).toBeGreaterThan(18080)
    expect(typeof status.snapshotUsedPercent).toBe('number')
    // Through the oclif command (--no-color) the same as through the fast path.
    expect((await box(env, ['status', '--no-color'])).stdout).toMatch(
      /^default +running +ssh 127\.0\.0\.1:\d+ +ports 127\.0\.0\.1:\d+→8080\/tcp +root snapshot \d+\.\d% used \(classic, resnap by initramfs-tools\)$/,
    )
    const global = JSON.parse((await box(env, ['global-status', '--json'])).stdout)
    expect(global).toEqual([expect.objectContaining({name: 'default', state: 'running', directory: project})])
  })

  it('QEMU listens on 127.0.0.1 only: ssh and every forwarded port, as the host sees its sockets', async () => {
    const pid = Number.parseInt(await readFile(join(project, '.box', 'machines', 'default', 'qemu.pid'), 'utf8'), 10)
    const status = JSON.parse((await box(env, ['status', '--json'])).stdout)[0]
    const addresses = await listeningAddressesOf(pid)
    expect(addresses.sort()).toEqual(
      [status.ssh, ...status.forwardedPorts.map((p: {host: number}) => `127.0.0.1:${p.host}`)].sort(),
    )
  })

  it('box-agent answers the snapshot fill as dmsetup sees it, and nothing but its fixed questions', async () => {
    const agent = new QemuProvider()
    const machine = {stateDir: join(project, '.box', 'machines', 'default')}
    const ask = (request: string) => agent.askAgent(machine, request, {timeoutMs: 10_000})
    expect(await ask('ping')).toBe('pong')
    const fill = async () => JSON.parse((await box(env, ['status', '--json'])).stdout)[0].snapshotUsedPercent as number
    const before = await fill()
    // 64 MiB written to / are copied into the 2 GiB snapshot: about 3 % more.
    const write = await box(env, [
      'ssh',
      '-c',
      'dd if=/dev/urandom of=/var/tmp/fill bs=1M count=64 conv=fsync status=none',
    ])
    expect(write.exitCode, write.stderr).toBe(0)
    const after = await fill()
    expect(after - before).toBeGreaterThan(2.5)
    const fromDmsetup = snapshotDataPercent(
      (await box(env, ['ssh', '-c', 'sudo dmsetup status box-root_snap'])).stdout,
    )!
    expect(Math.abs(fromDmsetup - after)).toBeLessThan(0.5)
    expect(snapshotDataPercent(await ask('dm-status box-root_snap'))).toBeCloseTo(fromDmsetup, 0)
    await expect(ask('dm-status --help')).rejects.toThrow(/not a device-mapper name/)
    await expect(ask('dm-status a;reboot')).rejects.toThrow(/not a device-mapper name/)
    await expect(ask('exec reboot')).rejects.toThrow(/unknown request: exec/)
    // What box up waits for before it connects: sshd listens on 22, nothing on 1 or 8080.
    expect(await ask('tcp-listening 22')).toBe('yes')
    expect(await ask('tcp-listening 1')).toBe('no')
    expect(await ask('tcp-listening 8080')).toBe('no')
    await expect(ask('tcp-listening 22;reboot')).rejects.toThrow(/not a port number/)
    await expect(ask('tcp-listening 0x16')).rejects.toThrow(/not a port number/)
    expect(await ask('ping')).toBe('pong')
  })

  it('a second up of a running machine changes nothing; a resnap keeps the machine key and the once-provisioners do not rerun', async () => {
    const pidFile = join(project, '.box', 'machines', 'default', 'qemu.pid')
    const bootId = async () => {
      const read = await box(env, ['ssh', '-c', 'cat /proc/sys/kernel/random/boot_id'])
      expect(read.exitCode, read.stderr).toBe(0)
      expect(read.stdout.trim()).toMatch(/^[0-9a-f-]{36}$/)
      return read.stdout.trim()
    }
    const [pidBefore, bootBefore] = [await readFile(pidFile, 'utf8'), await bootId()]
    const up = await box(env, ['up', '--json'])
    expect(up.exitCode, up.stderr).toBe(0)
    expect(JSON.parse(up.stdout)).toEqual([
      expect.objectContaining({name: 'default', state: 'running', alreadyRunning: true}),
    ])
    // The same QEMU process, and the same boot of the guest inside it.
    expect(await readFile(pidFile, 'utf8')).toBe(pidBefore)
    expect(await bootId()).toBe(bootBefore)
    const resnap = await box(env, ['resnap', '--json'])
    expect(resnap.exitCode, resnap.stderr).toBe(0)
    const [resnapped] = JSON.parse(resnap.stdout)
    expect(resnapped).toEqual(
      expect.objectContaining({name: 'default', outcome: 'resnapped', state: 'running', alreadyRunning: false}),
    )
    expect(resnapped.sshPort).toBeGreaterThan(0)
    expect(await bootId()).not.toBe(bootBefore)
    // With --json the guest's output goes to stderr, out of the JSON document's way.
    expect(resnap.stderr).not.toContain('provisioned as')
    expect(resnap.stderr).toContain('default: always runs')
    expect((await box(env, ['ssh', '-c', 'cat /persistent/provision-count'])).stdout.trim()).toBe('once')
  })

  it('reload halts and boots again: running, the machine key still works, only the run: always provisioners rerun', async () => {
    const pidFile = join(project, '.box', 'machines', 'default', 'qemu.pid')
    const pidBefore = await readFile(pidFile, 'utf8')
    const reload = await box(env, ['reload', '--json'])
    expect(reload.exitCode, reload.stderr).toBe(0)
    expect(await readFile(pidFile, 'utf8')).not.toBe(pidBefore)
    expect(JSON.parse(reload.stdout)).toEqual([
      expect.objectContaining({name: 'default', outcome: 'reloaded', state: 'running', alreadyRunning: false}),
    ])
    expect(reload.stderr).toContain('default: always runs')
    expect(reload.stderr).not.toContain('provisioned as')
    expect(JSON.parse((await box(env, ['status', '--json'])).stdout)[0].state).toBe('running')
    // box ssh offers the machine's own key and no other (IdentitiesOnly).
    const count = await box(env, ['ssh', '-c', 'cat /persistent/provision-count'])
    expect(count.exitCode, count.stderr).toBe(0)
    expect(count.stdout.trim()).toBe('once')
    // up asked box-agent whether sshd listened before connecting: no earlier probe lingered
    // in QEMU's network to reach sshd later (each would log a preauth disconnect).
    const sshdLog = await box(env, ['ssh', '-c', 'sudo journalctl -b -u ssh.service -o cat --no-pager'])
    expect(sshdLog.stdout).toContain('Accepted publickey')
    expect(sshdLog.stdout).not.toContain('[preauth]')
  })

  it('provision --json runs every provisioner again on the running machine', async () => {
    const provision = await box(env, ['provision', '--json'])
    expect(provision.exitCode, provision.stderr).toBe(0)
    expect(JSON.parse(provision.stdout)).toEqual([
      {name: 'default', outcome: 'provisioned', state: 'running', provisioners: 2},
    ])
    expect(provision.stderr).toContain('default: provisioned as root with GREETING=hi there')
    expect(provision.stderr).toContain('default: always runs')
    const count = await box(env, ['ssh', '-c', 'cat /persistent/provision-count'])
    expect(count.stdout.trim()).toBe('once\nonce')
  })

  it('a QEMU killed with SIGKILL is reported aborted and up starts it again', async () => {
    const pid = Number.parseInt(await readFile(join(project, '.box', 'machines', 'default', 'qemu.pid'), 'utf8'), 10)
    process.kill(pid, 'SIGKILL')
    await sleep(500)
    expect(JSON.parse((await box(env, ['status', '--json'])).stdout)[0].state).toBe('aborted')
    const up = await box(env, ['up'])
    expect(up.exitCode, up.stderr).toBe(0)
    expect((await box(env, ['ssh', '-c', 'true'])).exitCode).toBe(0)
  })

  it('halt powers off through ACPI', async () => {
    const halt = await box(env, ['halt', '--json'])
    expect(halt.exitCode, halt.stderr).toBe(0)
    // "halted", not "forced": the guest powered itself off.
    expect(JSON.parse(halt.stdout)).toEqual([{name: 'default', outcome: 'halted', state: 'poweroff'}])
    expect(JSON.parse((await box(env, ['status', '--json'])).stdout)[0].state).toBe('poweroff')
    expect(await qemuProcessesMentioning(project)).toEqual([])
  })

  it('QEMU killed mid-up (before ssh answers): up fails saying the machine stopped, shows the serial log, and the next up boots', async () => {
    const pidFile = join(project, '.box', 'machines', 'default', 'qemu.pid')
    const child = box(env, ['up'])
    let pid = 0
    for (let i = 0; i < 150 && !pid; i++) {
      pid = Number.parseInt(await readFile(pidFile, 'utf8').catch(() => ''), 10) || 0
      if (!pid) await sleep(200)
    }
    expect(pid).toBeGreaterThan(0)
    await sleep(2000) // into the boot: the kernel is printing, sshd is not up yet
    process.kill(pid, 'SIGKILL')
    const up = await child
    expect(up.exitCode).toBe(1)
    expect(up.stderr).toMatch(/the machine stopped while box waited for ssh/)
    expect(up.stderr).toContain('serial.log')
    expect(await qemuProcessesMentioning(project)).toEqual([])
    expect(JSON.parse((await box(env, ['status', '--json'])).stdout)[0].state).toMatch(/^(poweroff|aborted)$/)
    const again = await box(env, ['up'])
    expect(again.exitCode, again.stderr).toBe(0)
    expect((await box(env, ['ssh', '-c', 'findmnt -no SOURCE /'])).stdout.trim()).toMatch(/root_snap$/)
    expect((await box(env, ['halt'])).exitCode).toBe(0)
  })

  it('Ctrl-C during up leaves no QEMU behind', async () => {
    const child = execa(BIN, ['up'], {
      cwd: project,
      reject: false,
      env: {BOX_DATA_DIR: env.dataDir, BOX_CACHE_DIR: env.cacheDir},
    })
    try {
      // QEMU has daemonized once its pid file exists (its parent may linger for a moment).
      const pidFile = join(project, '.box', 'machines', 'default', 'qemu.pid')
      for (let i = 0; i < 150 && !(await stat(pidFile).catch(() => undefined)); i++) await sleep(200)
      expect((await qemuProcessesMentioning(project)).length).toBeGreaterThanOrEqual(1)
    } finally {
      child.kill('SIGINT')
    }
    const result = await child
    expect(result.exitCode).toBe(130)
    expect(await qemuProcessesMentioning(project)).toEqual([])
  })

  it('a second up of the same machine at once fails clearly', async () => {
    const first = box(env, ['up'])
    await sleep(1500)
    const second = await box(env, ['up'])
    expect(second.exitCode).not.toBe(0)
    expect(second.stderr).toMatch(/machine default is busy/)
    expect((await first).exitCode).toBe(0)
  })

  it('destroy -f removes the machine and its state', async () => {
    const destroy = await box(env, ['destroy', '-f', '--json'])
    expect(destroy.exitCode, destroy.stderr).toBe(0)
    expect(JSON.parse(destroy.stdout)).toEqual([{name: 'default', outcome: 'destroyed', state: 'not_created'}])
    expect(await qemuProcessesMentioning(project)).toEqual([])
    await expect(stat(join(project, '.box', 'machines', 'default'))).rejects.toThrow()
    const global = await box(env, ['global-status', '--json'])
    expect(global.exitCode, global.stderr).toBe(0)
    expect(JSON.parse(global.stdout)).toEqual([])
  })

  it('a failing provisioner fails up with its name and exit code', async () => {
    await writeFile(
      join(project, 'Boxfile'),
      'box: reference\nprovisioners:\n  - type: shell\n    name: breaks\n    inline: |\n      echo about to fail\n      exit 3\n',
    )
    const up = await box(env, ['up'])
    expect(up.exitCode, up.stderr).toBe(3)
    expect(up.stdout).toContain('default: about to fail')
    expect(up.stderr).toMatch(/provisioner "breaks" of default failed with exit code 3/)
  })

  it('QEMU killed mid-provision: provision fails saying the machine stopped, not blaming the script', async () => {
    await writeFile(
      join(project, 'Boxfile'),
      'box: reference\nprovisioners:\n  - type: shell\n    name: slow\n    inline: |\n      touch /tmp/provision-started\n      sleep 300\n',
    )
    const provision = box(env, ['provision'])
    let started = false
    for (let i = 0; i < 60 && !started; i++) {
      started = (await box(env, ['ssh', '-c', 'test -e /tmp/provision-started'])).exitCode === 0
      if (!started) await sleep(500)
    }
    expect(started).toBe(true)
    process.kill(
      Number.parseInt(await readFile(join(project, '.box', 'machines', 'default', 'qemu.pid'), 'utf8'), 10),
      'SIGKILL',
    )
    const result = await provision
    expect(result.exitCode).not.toBe(0)
    expect(result.stderr).toMatch(/machine default stopped while provisioner "slow" ran/)
    expect(result.stderr).not.toMatch(/fix the script/)
    expect(JSON.parse((await box(env, ['status', '--json'])).stdout)[0].state).toBe('aborted')
    expect((await box(env, ['destroy', '-f'])).exitCode).toBe(0)
  })

  it('a root snapshot that overflows while running: status warns above 80 %, and the next resnap boot recovers', async () => {
    // The reference box with a 320 MiB snapshot instead of its 2 GiB: the same image (hard links), another metadata.json.
    const stored = join(env.dataDir, 'boxes', 'reference')
    const [version] = await readdir(stored)
    const small = join(env.dataDir, 'boxes', 'small-snapshot', version!)
    await mkdir(small, {recursive: true})
    await execa('cp', ['-al', join(stored, version!, 'libvirt'), join(small, 'libvirt')])
    const metadataFile = join(small, 'libvirt', 'metadata.json')
    const metadata = JSON.parse(await readFile(metadataFile, 'utf8'))
    metadata.box.lvm.snapshot_size = '320M'
    await rm(metadataFile)
    await writeFile(metadataFile, JSON.stringify(metadata))
    await writeFile(join(project, 'Boxfile'), 'box: small-snapshot\nmemory: 1024\ncpus: 2\n')
    const up = await box(env, ['up'])
    expect(up.exitCode, up.stderr).toBe(0)
    const sizes = await box(env, ['ssh', '-c', 'sudo lvs --noheadings --units m -o lv_size box/root_snap'])
    expect(sizes.stdout.trim()).toBe('320.00m')

    // 270 MiB written to / fill the 320 MiB snapshot to about 85 %.
    const fill = await box(env, [
      'ssh',
      '-c',
      'dd if=/dev/zero of=/var/tmp/fill bs=1M count=270 conv=fsync status=none',
    ])
    expect(fill.exitCode, fill.stderr).toBe(0)
    const warned = await box(env, ['status'])
    expect(warned.exitCode, warned.stderr).toBe(0)
    expect(warned.stderr).toMatch(
      /root snapshot is (8[0-9]|9[0-9])\.\d% full: at 100% it is invalidated; reboot with resnap \(box resnap\)/,
    )
    expect(JSON.parse((await box(env, ['status', '--json'])).stdout)[0].warning).toMatch(/root snapshot is/)

    // Past 100 %: dm-snapshot drops the snapshot, and / with it (the writes fail; the command may never answer).
    await box(env, ['ssh', '-c', 'dd if=/dev/zero of=/var/tmp/more bs=1M count=100 conv=fsync status=none; sync'], {
      timeout: 120_000,
    })
    const full = JSON.parse((await box(env, ['status', '--json'])).stdout)[0]
    expect(full.state).toBe('running')
    if (full.snapshotUsedPercent !== undefined) expect(full.snapshotUsedPercent).toBe(100)

    const resnap = await box(env, ['resnap'])
    expect(resnap.exitCode, resnap.stderr).toBe(0)
    const after = await box(env, [
      'ssh',
      '-c',
      'findmnt -no SOURCE /; test -e /var/tmp/fill && echo fill-left || echo fill-gone',
    ])
    expect(after.exitCode, after.stderr).toBe(0)
    expect(after.stdout).toMatch(/root_snap\nfill-gone/)
    const fresh = JSON.parse((await box(env, ['status', '--json'])).stdout)[0]
    expect(fresh.snapshotUsedPercent).toBeLessThan(20)
    expect(fresh.warning).toBeUndefined()
    expect((await box(env, ['destroy', '-f'])).exitCode).toBe(0)
  })

  it('four machines of one project up at once: all boot, each on its own ports, each reached by its own key', async () => {
    const names = ['one', 'two', 'three', 'four']
    await writeFile(
      join(project, 'Boxfile'),
      [
        'box: reference',
        'memory: 512',
        'cpus: 1',
        'machines:',
        ...names.flatMap((name, i) => [
          `  ${name}:`,
          '    forwarded_ports:',
          `      - {guest: 80, host: ${18180 + i}}`,
        ]),
        '',
      ].join('\n'),
    )
    const ups = await Promise.all(names.map((name) => box(env, ['up', name])))
    for (const [i, up] of ups.entries()) expect(up.exitCode, `${names[i]}: ${up.stderr}`).toBe(0)
    const statuses = JSON.parse((await box(env, ['status', '--json'])).stdout) as {
      name: string
      state: string
      ssh: string
    }[]
    expect(statuses.map((s) => [s.name, s.state])).toEqual(names.map((name) => [name, 'running']))
    expect(new Set(statuses.map((s) => s.ssh)).size).toBe(4)
    for (const name of names) {
      const hostname = await box(env, ['ssh', name, '-c', 'cat /etc/hostname; findmnt -no SOURCE /'])
      expect(hostname.exitCode, hostname.stderr).toBe(0)
      expect(hostname.stdout).toMatch(/root_snap$/m)
    }
    const keys = await Promise.all(
      names.map((name) => readFile(join(project, '.box', 'machines', name, 'id_ed25519.pub'), 'utf8')),
    )
    expect(new Set(keys).size).toBe(4)
    const global = JSON.parse((await box(env, ['global-status', '--json'])).stdout) as {name: string; state: string}[]
    expect(
      global
        .filter((m) => m.state === 'running')
        .map((m) => m.name)
        .sort(),
    ).toEqual([...names].sort())
    const destroy = await box(env, ['destroy', '-f'])
    expect(destroy.exitCode, destroy.stderr).toBe(0)
    expect(await qemuProcessesMentioning(project)).toEqual([])
  }, 900_000)
})
