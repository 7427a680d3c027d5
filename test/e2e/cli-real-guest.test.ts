/**
 * The Boxfile and CLI features no other e2e file boots, on one project of two machines of
 * the reference box (web and db), booted once and reused: two guests up at once, `box ssh
 * NAME`, `status` of both; `hostname`; provisioners of `type: file`, a `path` script with
 * `args` and `env`, `privileged: false`, `run: never` (run only by `box provision
 * --provision-with`); UDP through a forwarded port and a TCP forward on a non-loopback
 * host_ip (warned about, reachable on the host's network address), both to real sockets
 * in the guest (perl, which Debian always has); interactive `box ssh` in a real terminal
 * (tmux); `halt -f` and `halt --timeout`; `up --no-resnap` and Boxfile `resnap: never`
 * keeping the previous boot's changes, and `up --provision` running once-provisioners again.
 */
import {mkdir, mkdtemp, readFile, rm, writeFile} from 'node:fs/promises'
import {createSocket} from 'node:dgram'
import {connect} from 'node:net'
import {networkInterfaces, tmpdir} from 'node:os'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ensureBox} from '../../src/builder/index.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {testCacheDir} from '../support/cache.js'
import {box, type CliEnv} from '../support/cli.js'
import {exitCodeIn, Terminal} from '../support/terminal.js'

// Host ports of this run (the TCP one moves if taken; UDP ones do not, so pick away from others).
const BASE_PORT = 30_000 + (process.pid % 5000) * 4
const UDP_HOST_PORT = BASE_PORT
const TCP_HOST_PORT = BASE_PORT + 1
const NONCE = `n${Date.now().toString(36)}`

const BOXFILE = `box: reference
provisioners:
  - type: shell
    name: who
    privileged: false
    inline: echo "unprivileged as $(id -un) uid $(id -u)"
machines:
  web:
    hostname: web-1.example.test
    forwarded_ports:
      - {guest: 9999, host: ${UDP_HOST_PORT}, protocol: udp}
      - {guest: 7000, host: ${TCP_HOST_PORT}, host_ip: 0.0.0.0}
    provisioners:
      - {type: file, name: config-file, source: files/app.conf, destination: ~/app.conf}
      - {type: file, name: conf-dir, source: files/conf.d, destination: /tmp/conf.d}
      - type: shell
        name: setup
        path: scripts/setup.sh
        args: ["two words", "$HOME", 3]
        env: {GREETING: "hello there", QUOTED: "it's \\"q\\" $NOT_EXPANDED"}
      - type: shell
        name: on-demand
        run: never
        inline: |
          echo "on-demand ran as $(id -un)"
          echo ran >> /persistent/on-demand
      - type: shell
        name: every-boot
        run: always
        inline: echo "every-boot, boot $(cat /proc/sys/kernel/random/boot_id)"
  db:
    resnap: never
    provisioners:
      - type: shell
        name: db-once
        inline: |
          echo "db-once ran"
          echo ran >> /persistent/db-once-count
`

const SETUP_SH = `#!/bin/sh
for word in "$@"; do echo "arg:$word"; done
echo "GREETING=$GREETING"
echo "QUOTED=$QUOTED"
echo "setup as $(id -un)"
`

// Each answers with its guest's host name, so the host sees which guest it reached.
const UDP_ECHO = `use IO::Socket::INET;
my $s = IO::Socket::INET->new(LocalPort => $ARGV[0], Proto => 'udp') or die "udp: $!";
while (1) {
  my $peer = $s->recv(my $m, 1500);
  next unless defined $peer;
  open my $f, '>>', '/tmp/udp-seen' or die; print $f "$m\\n"; close $f;
  open my $h, '<', '/proc/sys/kernel/hostname' or die; my $name = <$h>; chomp $name;
  $s->send("echo:$m from $name", 0, $peer);
}
`
const TCP_HELLO = `use IO::Socket::INET;
my $l = IO::Socket::INET->new(LocalPort => $ARGV[0], Listen => 5, ReuseAddr => 1, Proto => 'tcp') or die "tcp: $!";
while (my $c = $l->accept) {
  open my $h, '<', '/proc/sys/kernel/hostname' or die; my $name = <$h>;
  print $c "hello from $name"; close $c;
}
`

interface Status {
  name: string
  state: string
  ssh?: string
  forwardedPorts: Array<{guest: number; host: number; hostIp: string; protocol: string}>
}

/** One datagram to the forwarded port, sent again each second until the guest answers (UDP may be lost). */
async function udpExchange(port: number, message: string, timeoutMs: number): Promise<string | undefined> {
  const socket = createSocket('udp4')
  try {
    const reply = new Promise<string>((resolve) => socket.on('message', (data) => resolve(data.toString())))
    const deadline = Date.now() + timeoutMs
    while (Date.now() < deadline) {
      socket.send(message, port, '127.0.0.1')
      const answer = await Promise.race([reply, sleep(1000).then(() => undefined)])
      if (answer !== undefined) return answer
    }
    return undefined
  } finally {
    socket.close()
  }
}

/** What a TCP server sends before it closes the connection ('' when the connection is refused or silent). */
function readAll(host: string, port: number, ms: number): Promise<{text: string; error?: string}> {
  return new Promise((resolve) => {
    const socket = connect(port, host)
    let text = ''
    const done = (error?: string) => {
      socket.destroy()
      resolve({text, error})
    }
    socket.on('data', (data) => (text += data.toString()))
    socket.once('end', () => done())
    socket.once('error', (error: NodeJS.ErrnoException) => done(error.code ?? error.message))
    socket.setTimeout(ms, () => done('timeout'))
  })
}

/** The host's first IPv4 address that is not loopback: where another host would connect. */
function hostNetworkAddress(): string | undefined {
  return Object.values(networkInterfaces())
    .flat()
    .find((address) => address && address.family === 'IPv4' && !address.internal)?.address
}

describe('a two-machine Boxfile through the CLI on real guests', {timeout: 300_000}, () => {
  let env: CliEnv
  let project: string
  let firstUp: Awaited<ReturnType<typeof box>>
  const bootBeforeHalt: {web?: string; db?: string} = {}
  const terminal = new Terminal('cli-guest')
  const ssh = async (machine: string, command: string) => {
    const result = await box(env, ['ssh', machine, '-c', command])
    expect(result.exitCode, `${machine}: ${command}: ${result.stderr}`).toBe(0)
    return result.stdout
  }
  const statuses = async (): Promise<Status[]> => {
    const result = await box(env, ['status', '--json'])
    expect(result.exitCode, result.stderr).toBe(0)
    return JSON.parse(result.stdout) as Status[]
  }

  beforeAll(async () => {
    const {path: boxFile} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {cacheDir: testCacheDir()})
    const root = await mkdtemp(join(tmpdir(), 'box-cli-guest-'))
    project = join(root, 'project')
    await mkdir(join(project, 'files', 'conf.d', 'nested'), {recursive: true})
    await mkdir(join(project, 'scripts'))
    await writeFile(join(project, 'Boxfile'), BOXFILE)
    await writeFile(join(project, 'files', 'app.conf'), `setting = ${NONCE}\nspaces and 'quotes' "kept"\n`)
    await writeFile(join(project, 'files', 'conf.d', 'udp-echo.pl'), UDP_ECHO)
    await writeFile(join(project, 'files', 'conf.d', 'tcp-hello.pl'), TCP_HELLO)
    await writeFile(join(project, 'files', 'conf.d', 'nested', 'deep.txt'), `deep ${NONCE}\n`)
    await writeFile(join(project, 'scripts', 'setup.sh'), SETUP_SH, {mode: 0o755})
    env = {cwd: project, dataDir: join(root, 'data'), cacheDir: testCacheDir()}
    const added = await box(env, ['add', 'reference', boxFile])
    expect(added.exitCode, added.stderr).toBe(0)
    firstUp = await box(env, ['up'])
    expect(firstUp.exitCode, `${firstUp.stdout}\n${firstUp.stderr}`).toBe(0)
  })

  afterAll(async () => {
    await terminal.kill()
    if (env) {
      await box(env, ['destroy', '-f'])
      await rm(join(env.cwd, '..'), {recursive: true, force: true})
    }
  })

  it('up booted both machines: status shows both running on their own ssh ports; box ssh needs a name', async () => {
    const [web, db] = await statuses()
    expect(web).toMatchObject({name: 'web', state: 'running'})
    expect(db).toMatchObject({name: 'db', state: 'running'})
    expect(web!.ssh).toMatch(/^127\.0\.0\.1:\d+$/)
    expect(db!.ssh).toMatch(/^127\.0\.0\.1:\d+$/)
    expect(web!.ssh).not.toBe(db!.ssh)
    const text = await box(env, ['status', '--no-color'])
    expect(text.stdout).toMatch(/^web +running +ssh 127\.0\.0\.1:\d+ /m)
    expect(text.stdout).toMatch(/^db +running +ssh 127\.0\.0\.1:\d+ /m)
    // Two different guests: each has its own boot id.
    const webBoot = (await ssh('web', 'cat /proc/sys/kernel/random/boot_id')).trim()
    const dbBoot = (await ssh('db', 'cat /proc/sys/kernel/random/boot_id')).trim()
    expect(webBoot).toMatch(/^[0-9a-f-]{36}$/)
    expect(dbBoot).toMatch(/^[0-9a-f-]{36}$/)
    expect(webBoot).not.toBe(dbBoot)
    // web resnaps (the default), db does not (resnap: never).
    expect(firstUp.stderr).toContain('web: booting with resnap\n')
    expect(firstUp.stderr).toContain('db: booting\n')
    const unnamed = await box(env, ['ssh', '-c', 'true'])
    expect(unnamed.exitCode).toBe(2)
    expect(unnamed.stderr).toContain('box ssh needs one machine; this Boxfile has web, db')
  })

  it("hostname: web is called what the Boxfile says, everywhere Debian looks; db keeps the box's", async () => {
    expect((await ssh('web', 'cat /proc/sys/kernel/hostname')).trim()).toBe('web-1.example.test')
    expect((await ssh('web', 'cat /etc/hostname')).trim()).toBe('web-1.example.test')
    expect(await ssh('web', 'grep "^127.0.1.1" /etc/hosts')).toMatch(/^127\.0\.1\.1\tweb-1\.example\.test web-1$/)
    // sudo resolves the host name it runs on: no "unable to resolve host" warning.
    const sudo = await box(env, ['ssh', 'web', '-c', 'sudo true'])
    expect(sudo.exitCode).toBe(0)
    expect(sudo.stderr).not.toContain('unable to resolve host')
    expect((await ssh('db', 'cat /proc/sys/kernel/hostname')).trim()).toBe('box')
  })

  it('the first up ran the once and always provisioners in order, as root or as the login user', async () => {
    const out = firstUp.stdout
    // privileged: false runs as the login user (uid not 0); the default, privileged, as root.
    for (const machine of ['web', 'db']) {
      const line = new RegExp(`^${machine}: unprivileged as (\\S+) uid (\\d+)$`, 'm').exec(out)
      expect(line, `${machine}'s "who" line in:\n${out}`).not.toBeNull()
      expect(line![1]).toBe('box')
      expect(line![2]).not.toBe('0')
    }
    expect(out).toContain('db: db-once ran')
    expect(out).toMatch(/^web: every-boot, boot [0-9a-f-]{36}$/m)
    // The top-level provisioner first, then the machine's own, in Boxfile order.
    const order = ['web: unprivileged as', 'web: arg:two words', 'web: every-boot'].map((line) => out.indexOf(line))
    expect(order.every((at) => at >= 0)).toBe(true)
    expect([...order].sort((a, b) => a - b)).toEqual(order)
    expect((await ssh('db', 'cat /persistent/db-once-count')).trim()).toBe('ran')
  })

  it('a path script got its args exactly (no shell re-evaluation) and its env, and ran as root', async () => {
    const lines = firstUp.stdout.split('\n').filter((line) => line.startsWith('web: '))
    expect(lines.filter((line) => line.startsWith('web: arg:'))).toEqual([
      'web: arg:two words',
      'web: arg:$HOME',
      'web: arg:3',
    ])
    expect(lines).toContain('web: GREETING=hello there')
    expect(lines).toContain('web: QUOTED=it\'s "q" $NOT_EXPANDED')
    expect(lines).toContain('web: setup as root')
  })

  it('file provisioners copied a file to ~/ and a directory tree, byte for byte', async () => {
    expect(await ssh('web', 'cat /home/box/app.conf')).toBe(
      (await readFile(join(project, 'files', 'app.conf'), 'utf8')).trimEnd(),
    )
    expect(await ssh('web', 'stat -c %U /home/box/app.conf')).toBe('box')
    expect(await ssh('web', 'cd /tmp/conf.d && find . -type f | sort')).toBe(
      './nested/deep.txt\n./tcp-hello.pl\n./udp-echo.pl',
    )
    expect(await ssh('web', 'cat /tmp/conf.d/nested/deep.txt')).toBe(`deep ${NONCE}`)
    // db has no file provisioners: nothing of web's reached it.
    expect((await box(env, ['ssh', 'db', '-c', 'test -e /home/box/app.conf'])).exitCode).toBe(1)
  })

  it('run: never did not run at up; provision --provision-with runs it (and only it), plain provision does not', async () => {
    expect(firstUp.stdout).not.toContain('on-demand ran')
    expect((await box(env, ['ssh', 'web', '-c', 'test -e /persistent/on-demand'])).exitCode).toBe(1)

    const unknown = await box(env, ['provision', 'web', '--provision-with', 'no-such'])
    expect(unknown.exitCode).toBe(2)
    expect(unknown.stderr).toContain('no provisioner named "no-such" in web')
    expect(unknown.stderr).toContain('on-demand')

    const named = await box(env, ['provision', '--provision-with', 'on-demand', 'web'])
    expect(named.exitCode, named.stderr).toBe(0)
    expect(named.stdout).toContain('web: on-demand ran as root')
    expect(named.stdout).not.toContain('arg:')
    expect(named.stdout).not.toContain('every-boot')
    expect(named.stdout).not.toContain('unprivileged')
    expect((await ssh('web', 'cat /persistent/on-demand')).trim()).toBe('ran')

    const plain = await box(env, ['provision', 'web'])
    expect(plain.exitCode, plain.stderr).toBe(0)
    expect(plain.stdout).toContain('web: arg:two words')
    expect(plain.stdout).toContain('web: every-boot')
    expect(plain.stdout).not.toContain('on-demand')
    expect((await ssh('web', 'cat /persistent/on-demand')).trim()).toBe('ran')
  })

  it('UDP through the forwarded port reaches a socket in the guest and the reply comes back', async () => {
    const [web] = await statuses()
    expect(web!.forwardedPorts).toContainEqual({guest: 9999, host: UDP_HOST_PORT, hostIp: '127.0.0.1', protocol: 'udp'})
    const listening = await execa('ss', ['-Hlun', `sport = :${UDP_HOST_PORT}`])
    expect(listening.stdout).toContain(`127.0.0.1:${UDP_HOST_PORT}`)
    await ssh('web', 'setsid perl /tmp/conf.d/udp-echo.pl 9999 > /tmp/udp.log 2>&1 < /dev/null & echo started')
    const message = `ping-${NONCE}`
    const reply = await udpExchange(UDP_HOST_PORT, message, 30_000)
    expect(reply, `the guest's log: ${await ssh('web', 'cat /tmp/udp.log')}`).toBe(
      `echo:${message} from web-1.example.test`,
    )
    expect(await ssh('web', 'cat /tmp/udp-seen')).toContain(message)
  })

  it('host_ip 0.0.0.0: up warned, QEMU listens on every address, the host network address reaches the guest', async () => {
    const [web] = await statuses()
    const forward = web!.forwardedPorts.find((port) => port.guest === 7000)!
    expect(forward).toMatchObject({hostIp: '0.0.0.0', protocol: 'tcp'})
    expect(firstUp.stderr).toContain(
      `web: guest port 7000/tcp is forwarded from 0.0.0.0:${forward.host}, which other hosts can reach (the Boxfile's host_ip)`,
    )
    // Only that forward is warned about: the loopback UDP one is not.
    expect(firstUp.stderr).not.toContain('guest port 9999/udp is forwarded from')
    const listening = await execa('ss', ['-Hltn', `sport = :${forward.host}`])
    expect(listening.stdout).toMatch(new RegExp(`\\s0\\.0\\.0\\.0:${forward.host}\\s`))

    const address = hostNetworkAddress()
    expect(address, 'this host has no network address other than loopback').toBeDefined()
    await ssh('web', 'setsid perl /tmp/conf.d/tcp-hello.pl 7000 > /tmp/tcp.log 2>&1 < /dev/null & echo started')
    let reached = {text: ''} as {text: string; error?: string}
    for (let i = 0; i < 40 && !reached.text; i++) {
      reached = await readAll(address!, forward.host, 5000)
      if (!reached.text) await sleep(500)
    }
    expect(reached.text, `the guest's log: ${await ssh('web', 'cat /tmp/tcp.log')}`).toBe(
      'hello from web-1.example.test\n',
    )
    // ssh's forward stays on loopback: the same network address does not reach it.
    const sshPort = Number(web!.ssh!.split(':')[1])
    expect((await readAll(address!, sshPort, 5000)).error).toBe('ECONNREFUSED')
  })

  it('interactive box ssh in a terminal: a prompt, a command run, the exit code given back', async () => {
    const exitFile = join(project, '..', 'ssh-exit')
    await terminal.start('ssh', env, exitFile, ['ssh', 'web'])
    await terminal.waitFor((screen) => /box@web-1:~\$ *$/m.test(screen), "web's shell prompt")
    await terminal.keys('-l', 'tty; echo "sum=$((40+2))"')
    await terminal.keys('Enter')
    const screen = await terminal.waitFor((text) => text.includes('sum=42'), 'the command output')
    expect(screen).toMatch(/^\/dev\/pts\/\d+$/m) // a real TTY was allocated
    await terminal.keys('-l', 'exit 3')
    await terminal.keys('Enter')
    expect(await exitCodeIn(exitFile, 30_000), await terminal.screen()).toBe('3')
  })

  it('halt -f powers web off at once; halt --timeout forces db after that many seconds when it ignores ACPI', async () => {
    bootBeforeHalt.web = (await ssh('web', 'cat /proc/sys/kernel/random/boot_id')).trim()
    bootBeforeHalt.db = (await ssh('db', 'cat /proc/sys/kernel/random/boot_id')).trim()
    // Flushed to disk: a forced power-off loses what is only in the guest's cache.
    await ssh('web', `echo "kept ${NONCE}" | sudo tee /root/no-resnap-marker > /dev/null && sync`)
    await ssh('db', `echo "kept ${NONCE}" | sudo tee /root/never-marker > /dev/null && sync`)

    let started = Date.now()
    const forced = await box(env, ['halt', '-f', 'web'])
    const forcedMs = Date.now() - started
    expect(forced.exitCode, forced.stderr).toBe(0)
    expect(forced.stdout).toMatch(/^web: halted \(forced\)$/m)
    expect(forced.stdout).not.toContain('db:')
    expect(forcedMs).toBeLessThan(15_000)
    expect((await statuses()).map((s) => s.state)).toEqual(['poweroff', 'running'])

    // Nothing in db answers the power button any more (acpid is what powers this box off).
    // (Each unit the acpid package may have; the check after is what must hold.)
    await ssh(
      'db',
      'for unit in acpid.path acpid.socket acpid.service; do sudo systemctl stop "$unit" 2>/dev/null || :; done',
    )
    // As root: the box has no D-Bus for a user's systemctl to ask through.
    expect((await box(env, ['ssh', 'db', '-c', 'sudo systemctl is-active acpid.service'])).stdout.trim()).toBe(
      'inactive',
    )
    started = Date.now()
    const timedOut = await box(env, ['halt', 'db', '--timeout', '6'])
    const timedOutMs = Date.now() - started
    expect(timedOut.exitCode, timedOut.stderr).toBe(0)
    expect(timedOut.stdout).toMatch(/^db: halted \(forced\)$/m)
    expect(timedOutMs).toBeGreaterThanOrEqual(6000)
    // Well short of the default 30 s: the flag set the wait.
    expect(timedOutMs).toBeLessThan(20_000)
    expect((await statuses()).map((s) => s.state)).toEqual(['poweroff', 'poweroff'])
  })

  it('up --no-resnap keeps the previous boot of web; once-provisioners do not rerun', async () => {
    const up = await box(env, ['up', 'web', '--no-resnap'])
    expect(up.exitCode, up.stderr).toBe(0)
    expect(up.stderr).toContain('web: booting\n')
    expect((await ssh('web', 'cat /proc/sys/kernel/random/boot_id')).trim()).not.toBe(bootBeforeHalt.web)
    expect((await ssh('web', 'sudo cat /root/no-resnap-marker')).trim()).toBe(`kept ${NONCE}`)
    expect(up.stdout).toMatch(/^web: every-boot, boot [0-9a-f-]{36}$/m)
    expect(up.stdout).not.toContain('arg:')
    expect(up.stdout).not.toContain('unprivileged')
    expect(up.stdout).not.toContain('on-demand')
    expect((await ssh('web', 'cat /proc/sys/kernel/hostname')).trim()).toBe('web-1.example.test')
    expect((await statuses()).map((s) => s.state)).toEqual(['running', 'poweroff'])
  })

  it('db (resnap: never) kept its root across halt and up; up --provision ran its once-provisioners again', async () => {
    const up = await box(env, ['up', 'db', '--provision'])
    expect(up.exitCode, up.stderr).toBe(0)
    expect((await ssh('db', 'cat /proc/sys/kernel/random/boot_id')).trim()).not.toBe(bootBeforeHalt.db)
    expect((await ssh('db', 'sudo cat /root/never-marker')).trim()).toBe(`kept ${NONCE}`)
    expect(up.stdout).toContain('db: db-once ran')
    expect(up.stdout).toMatch(/^db: unprivileged as box uid \d+$/m)
    expect((await ssh('db', 'cat /persistent/db-once-count')).trim()).toBe('ran\nran')
    expect((await statuses()).map((s) => s.state)).toEqual(['running', 'running'])
  })
})
