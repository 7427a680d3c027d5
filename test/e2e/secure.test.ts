/**
 * `box secure` on a real guest: the questions answered in a real terminal (tmux), the
 * lockdown checked inside the guest and from the host, the password searched for where
 * it must never be, and the lockdown still in force after a resnap.
 */
import {mkdir, mkdtemp, readdir, readFile, rm, writeFile} from 'node:fs/promises'
import {connect} from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ensureBox} from '../../src/builder/index.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {testCacheDir} from '../support/cache.js'
import {box, type CliEnv} from '../support/cli.js'
import {exitCodeIn, parseDuration, screenRows, Terminal, uncleanRow} from '../support/terminal.js'

const BOXFILE = `box: reference
site: example.org
forwarded_ports:
  - {guest: 8443, host: 28443}   # the director's port (director_port's default)
  - {guest: 2222, host: 22222}   # any other port: the firewall drops it
`
// Quotes, spaces and a "$" make any shell-quoting slip visible.
const FIRST_PASSWORD = `It's a $ecret "pass" ${Date.now()}`
const SECOND_PASSWORD = `second-${Date.now()}-pässword`

/** Collects `ps` output every 50 ms until stopped: a password on any command line shows up here. */
function sampleHostProcesses(): {stop: () => Promise<string>} {
  let running = true
  const samples: string[] = []
  const loop = (async () => {
    while (running) {
      samples.push((await execa('ps', ['-eo', 'args='], {reject: false})).stdout)
      await sleep(50)
    }
  })()
  return {
    stop: async () => {
      running = false
      await loop
      return samples.join('\n')
    },
  }
}

/** Whether a TCP service behind a forwarded port sends its first bytes (an ssh banner) within `ms`. */
function bannerWithin(port: number, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1')
    const done = (result: boolean) => {
      socket.destroy()
      resolve(result)
    }
    socket.once('data', (data) => done(data.toString().startsWith('SSH-')))
    socket.once('error', () => done(false))
    socket.once('close', () => done(false))
    socket.setTimeout(ms, () => done(false))
  })
}

const occurrences = (text: string, needle: string) => text.split(needle).length - 1

describe('box secure on a real guest', {timeout: 420_000}, () => {
  let env: CliEnv
  let project: string
  let stateDir: string
  const terminal = new Terminal('secure')
  /** What the terminal showed during the first box add and box up: each bottom line sampled, and the screen after. */
  const seen: Record<string, {lines: string[]; screen: string}> = {}
  const ssh = async (command: string) => {
    const result = await box(env, ['ssh', '-c', command])
    expect(result.exitCode, `${command}: ${result.stderr}`).toBe(0)
    return result.stdout
  }
  const hostPort = async (guest: number): Promise<number> => {
    const [status] = JSON.parse((await box(env, ['status', '--json'])).stdout) as Array<{
      forwardedPorts: Array<{guest: number; host: number}>
    }>
    return status!.forwardedPorts.find((port) => port.guest === guest)!.host
  }

  beforeAll(async () => {
    const {path: boxFile} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {cacheDir: testCacheDir()})
    const root = await mkdtemp(join(tmpdir(), 'box-secure-'))
    project = join(root, 'project')
    await mkdir(project)
    stateDir = join(project, '.box')
    env = {cwd: project, dataDir: join(root, 'data'), cacheDir: testCacheDir()}
    // The real box add and first box up, in the terminal: their screens are read by the first test.
    for (const [session, args] of [
      ['add', ['add', 'reference', boxFile]],
      ['up', ['up']],
    ] as const) {
      if (session === 'up') await writeFile(join(project, 'Boxfile'), BOXFILE)
      const exitFile = join(root, `${session}-exit`)
      await terminal.start(session, env, exitFile, [...args])
      const {exitCode, lines} = await terminal.sampleUntilExit(exitFile, 600_000, session === 'up' ? 250 : 50)
      const screen = await terminal.screen(true)
      expect(exitCode, screen).toBe('0')
      seen[session] = {lines, screen}
    }
  })

  afterAll(async () => {
    await terminal.kill()
    if (env) {
      await box(env, ['destroy', '-f'])
      await rm(join(env.cwd, '..'), {recursive: true, force: true})
    }
  })

  it('box add and the first box up read cleanly in a terminal: no byte counter, one ssh wait counter that only goes up', () => {
    const add = seen.add!
    const extracting = add.lines.filter((line) => /^\S Extracting reference /.test(line) && !line.startsWith('✔'))
    expect(extracting.length, add.lines.join('\n')).toBeGreaterThan(0)
    for (const line of extracting) expect(line).toMatch(/^[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] Extracting reference \(\d+(\.\d)? s\)$/)
    const addRows = screenRows(add.screen)
    expect(uncleanRow(addRows), add.screen).toBeUndefined()
    expect(addRows[0]).toMatch(/^✔ Extracting reference \(\d+(\.\d)? s\): \d+ MB$/)
    expect(addRows.at(-1)).toMatch(/^Added box reference \S+ \(\w+\), \d+ MB$/)

    // Booting's live line: "⠹ default: booting with resnap (27 s) waiting for ssh on 127.0.0.1:34087 (25 s)".
    const up = seen.up!
    const live = up.lines.filter((line) => /^[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] default: booting /.test(line))
    const shape =
      /^. default: booting(?: with resnap)? \(([^)]+)\)(?: waiting for ssh on 127\.0\.0\.1:\d+ \((\d+) s\))?$/
    for (const line of live) expect(line).toMatch(shape)
    const booting = live.map((line) => shape.exec(line)!)
    const waits = booting.filter((match) => match[2] !== undefined).map((match) => Number(match[2]))
    expect(new Set(waits).size, up.lines.join('\n')).toBeGreaterThan(1)
    // One counter for the whole wait (a first boot waits twice): it only goes up, never starts again at 0 s.
    expect(waits, up.lines.join('\n')).toEqual([...waits].sort((a, b) => a - b))
    const elapsed = booting.map((match) => parseDuration(match[1]!))
    expect(elapsed).toEqual([...elapsed].sort((a, b) => a - b))
    const upRows = screenRows(up.screen)
    expect(uncleanRow(upRows), up.screen).toBeUndefined()
    expect(upRows.filter((row) => row.startsWith('✔ default: booting'))).toEqual([
      expect.stringMatching(/^✔ default: booting(?: with resnap)? \(\d+(\.\d)? s\): ssh on 127\.0\.0\.1:\d+$/),
    ])
    expect(
      upRows.some((row) => row.startsWith('✘')),
      up.screen,
    ).toBe(false)
  })

  it('before securing: --status says so, and missing answers without a terminal name their flags', async () => {
    const status = JSON.parse((await box(env, ['secure', '--status', '--json'])).stdout)
    expect(status).toEqual([expect.objectContaining({machine: 'default', configured: false, inForce: false})])

    const noRole = await box(env, ['secure', '--yes'])
    expect(noRole.exitCode).toBe(2)
    expect(noRole.stderr).toContain('pass --role')
    // The Boxfile gives the site; the user name is missing.
    const noUser = await box(env, ['secure', '--role', 'worker', '--yes'])
    expect(noUser.exitCode).toBe(2)
    expect(noUser.stderr).toContain('pass --username')
    // No terminal (stdin is not one): no question, no hang.
    const noPassword = await box(env, ['secure', '--role', 'worker', '--username', 'alice'])
    expect(noPassword.exitCode).toBe(2)
    expect(noPassword.stderr).toContain('pass --password-stdin')
    const badSite = await box(
      env,
      ['secure', '--role', 'worker', '--site', 'not a site', '--username', 'alice', '--password-stdin'],
      {input: 'x\n'},
    )
    expect(badSite.exitCode).toBe(2)
    expect(badSite.stderr).toContain('--site: "not a site" is not a host name')
  })

  it('Ctrl-C at a question ends box secure with 130 and changes nothing', async () => {
    const exitFile = join(project, '..', 'interrupted-exit')
    await terminal.start('interrupted', env, exitFile, ['secure'])
    await terminal.waitFor((screen) => screen.includes('Worker or director?'), 'the role question')
    await terminal.keys('C-c')
    expect(await exitCodeIn(exitFile, 30_000), await terminal.screen()).toBe('130')
    expect(await terminal.screen()).toContain('interrupted')
    expect(JSON.parse((await box(env, ['secure', '--status', '--json'])).stdout)[0].configured).toBe(false)
  })

  it('asks its four questions in a terminal, and the password appears nowhere', async () => {
    // A sampler in the guest too: the password must not be on a command line there either.
    await ssh(
      'setsid sh -c "while :; do ps -eo args=; sleep 0.05; done" > /tmp/ps-samples 2>&1 < /dev/null & echo $! > /tmp/ps-sampler',
    )
    const hostProcesses = sampleHostProcesses()
    const exitFile = join(project, '..', 'secure-exit')
    await terminal.start('secure', env, exitFile, ['secure'])
    await terminal.waitFor((screen) => screen.includes('Worker or director?'), 'the role question')
    await terminal.keys('Down', 'Enter')
    const siteQuestion = await terminal.waitFor((screen) => screen.includes('Site name?'), 'the site question')
    expect(siteQuestion).toContain('example.org') // the Boxfile's site, offered as default
    await terminal.keys('Enter')
    await terminal.waitFor((screen) => screen.includes('User name?'), 'the user question')
    await terminal.keys('-l', 'alice')
    await terminal.keys('Enter')
    await terminal.waitFor((screen) => screen.includes('Password?'), 'the password question')
    await terminal.typeSecret(FIRST_PASSWORD)
    await terminal.keys('Enter')
    await terminal.waitFor((screen) => screen.includes('Password again?'), 'the confirmation')
    await terminal.typeSecret('a typo')
    await terminal.keys('Enter')
    // Different twice: asked again.
    await terminal.waitFor(
      (screen) => screen.includes('differ') && occurrences(screen, 'Password?') === 2,
      'the password asked again',
    )
    await terminal.typeSecret(FIRST_PASSWORD)
    await terminal.keys('Enter')
    await terminal.waitFor((screen) => occurrences(screen, 'Password again?') === 2, 'the second confirmation')
    await terminal.typeSecret(FIRST_PASSWORD)
    await terminal.keys('Enter')

    const exitCode = await exitCodeIn(exitFile, 180_000)
    const screen = await terminal.screen()
    const hostPs = await hostProcesses.stop()
    expect(exitCode, screen).toBe('0')
    expect(screen).toContain('default: secured as director of example.org (user alice)')
    // Below the questions: the guest's lines, each on its own row above the stage's (never run together with it).
    const rows = screenRows(await terminal.screen(true))
    const output = rows.slice(rows.findIndex((row) => /^(✔ )?default: /.test(row)))
    expect(uncleanRow(output), output.join('\n')).toBeUndefined()
    for (const row of output) expect(row).toMatch(/^(✔ )?default: /)
    expect(output.filter((row) => row.startsWith('✔'))).toEqual([
      expect.stringMatching(/^✔ default: securing as director of example\.org \(\d+(\.\d)? s\)$/),
    ])
    expect(output.length, output.join('\n')).toBeGreaterThan(2) // guest lines came

    await ssh('kill $(cat /tmp/ps-sampler)')
    const guestPs = await ssh('cat /tmp/ps-samples')
    expect(guestPs).toContain('ps -eo args=') // the sampler did sample
    expect(hostPs).toContain('secure') // …and so did the host's
    const stateFiles: string[] = []
    for (const entry of await readdir(stateDir, {recursive: true, withFileTypes: true})) {
      // The machine's disk holds the guest's /persistent, where the password belongs (root only).
      if (entry.isFile() && entry.name !== 'disk.qcow2')
        stateFiles.push(await readFile(join(entry.parentPath, entry.name), 'latin1'))
    }
    const places: Record<string, string> = {
      terminal: screen,
      'host processes': hostPs,
      'guest processes': guestPs,
      'state dir': stateFiles.join('\n'),
      'serial log': await readFile(join(stateDir, 'machines', 'default', 'serial.log'), 'utf8'),
      'guest journal': await ssh('sudo journalctl -b -o cat --no-pager'),
      'guest shell histories and temp files': await ssh(
        'sudo cat /root/.*history /home/*/.*history /tmp/box-provision.* 2>/dev/null; true',
      ),
    }
    expect(places['state dir']).toContain('ssh') // the search did read the state
    for (const [place, text] of Object.entries(places)) {
      expect(text.includes(FIRST_PASSWORD), `the password is in the ${place}`).toBe(false)
      expect(text.includes(FIRST_PASSWORD.replaceAll("'", "'\\''")), `the quoted password is in the ${place}`).toBe(
        false,
      )
    }
    // It is where it belongs, exactly as typed.
    expect(await ssh('sudo cat /persistent/secure/password')).toBe(FIRST_PASSWORD)

    // The store (every box, disk images included) never saw it: grep reads the password from stdin (-f -), not argv.
    const inStore = await execa('grep', ['-rlaF', '-f', '-', env.dataDir], {
      input: FIRST_PASSWORD,
      reject: false,
    })
    expect(inStore.exitCode, `the password is in the store: ${inStore.stdout}`).toBe(1)

    // Private keys: the machine's (host side) and the guest's ssh host key (guest side) stay where they are.
    const machineKeyFile = join(stateDir, 'machines', 'default', 'id_ed25519')
    const guestHostKey = await ssh('sudo cat /persistent/ssh/ssh_host_ed25519_key')
    // The base64 lines of a key file but the first, which starts with a header every unencrypted OpenSSH key shares.
    const keyLines = (text: string) =>
      text
        .split('\n')
        .map((line) => line.trim())
        .filter((line) => line.length >= 40 && !line.startsWith('-----'))
        .slice(1)
    const machineKey = keyLines(await readFile(machineKeyFile, 'utf8'))
    const hostKey = keyLines(guestHostKey)
    expect(machineKey.length).toBeGreaterThan(0)
    expect(hostKey.length).toBeGreaterThan(0)
    const otherStateFiles: string[] = []
    for (const entry of await readdir(stateDir, {recursive: true, withFileTypes: true})) {
      const path = join(entry.parentPath, entry.name)
      if (entry.isFile() && entry.name !== 'disk.qcow2' && path !== machineKeyFile)
        otherStateFiles.push(await readFile(path, 'latin1'))
    }
    const keyPlaces: Record<string, string> = {
      ...places,
      'state dir': otherStateFiles.join('\n'),
      'serial log': await readFile(join(stateDir, 'machines', 'default', 'serial.log'), 'utf8'),
    }
    for (const [place, text] of Object.entries(keyPlaces)) {
      for (const line of machineKey)
        expect(text.includes(line), `the machine's private key is in the ${place}`).toBe(false)
      for (const line of hostKey)
        expect(text.includes(line), `the guest's host private key is in the ${place}`).toBe(false)
    }
    const keysInStore = await execa('grep', ['-rlaF', '-f', '-', env.dataDir], {
      input: [...machineKey, ...hostKey].join('\n'),
      reject: false,
    })
    expect(keysInStore.exitCode, `a private key is in the store: ${keysInStore.stdout}`).toBe(1)
  })

  it('locks the guest down: key-only sshd, a dropping firewall, private files, no password anywhere', async () => {
    const status = JSON.parse((await box(env, ['secure', '--status', '--json'])).stdout)[0]
    expect(status).toMatchObject({
      role: 'director',
      site: 'example.org',
      username: 'alice',
      directorPort: 8443,
      inForce: true,
    })

    const sshd = await ssh('sudo sshd -T')
    for (const setting of [
      'passwordauthentication no',
      'kbdinteractiveauthentication no',
      'permitrootlogin no',
      'authenticationmethods publickey',
      'allowusers box',
      'allowtcpforwarding no',
    ]) {
      expect(sshd).toContain(setting)
    }
    // Only the machine key's file: ~/.ssh/authorized_keys (where Vagrant writes) is not read.
    expect(sshd).toMatch(/^authorizedkeysfile \/persistent\/ssh\/authorized_keys\/%u$/m)
    const ruleset = await ssh('sudo nft list ruleset')
    expect(ruleset).toMatch(/hook input priority filter; policy drop;/)
    expect(ruleset).toContain('ip saddr 10.0.2.2 tcp dport 22 accept')
    expect(ruleset).toContain('tcp dport 8443 accept')
    expect(
      await ssh(`sudo sh -c 'stat -c "%a %U %n" /persistent/secure /persistent/secure/* /persistent/runsecure'`),
    ).toBe(
      [
        '700 root /persistent/secure',
        '600 root /persistent/secure/nftables.conf',
        '600 root /persistent/secure/password',
        '600 root /persistent/secure/secure.conf',
        '600 root /persistent/secure/sshd.conf',
        '700 root /persistent/runsecure',
      ].join('\n'),
    )
    expect(await ssh('sudo cat /persistent/secure/secure.conf')).toMatch(
      /ROLE=director\nSITE=example.org\nUSERNAME=alice\nDIRECTOR_PORT=8443$/,
    )
    expect(await ssh('sudo passwd -S root')).toMatch(/^root L /)
    expect(await ssh('sudo systemctl is-enabled serial-getty@ttyS0.service || true')).toBe('masked')

    // From the host: the director's port answers, any other port is dropped.
    await ssh('sudo /usr/sbin/sshd -p 2222 -p 8443 -o AllowUsers=nobody')
    expect(await bannerWithin(await hostPort(8443), 15_000)).toBe(true)
    expect(await bannerWithin(await hostPort(2222), 5000)).toBe(false)
  })

  it('securing again replaces the configuration: now a worker, the director port closed', async () => {
    const again = await box(
      env,
      ['secure', '--role', 'worker', '--site', 'other.example', '--username', 'bob', '--password-stdin', '--yes'],
      {input: `${SECOND_PASSWORD}\n`},
    )
    expect(again.exitCode, again.stderr).toBe(0)
    expect(again.stdout).toContain('default: secured as worker of other.example (user bob)')
    expect(again.stdout).not.toContain(SECOND_PASSWORD)
    const ruleset = await ssh('sudo nft list ruleset')
    expect(ruleset).not.toContain('8443')
    expect(occurrences(ruleset, 'table inet box_secure')).toBe(1)
    expect(await ssh('sudo cat /persistent/secure/secure.conf')).toMatch(
      /ROLE=worker\nSITE=other.example\nUSERNAME=bob$/,
    )
    expect(await ssh('sudo cat /persistent/secure/password')).toBe(SECOND_PASSWORD)
    expect(await ssh('sudo ls -a /persistent')).not.toMatch(/\.secure\.|\.runsecure\.new/)
    expect(await bannerWithin(await hostPort(8443), 5000)).toBe(false)
  })

  it('after a resnap the box is still secured, before and without any ssh', async () => {
    await ssh('sudo touch /root/resnap-marker')
    const resnap = await box(env, ['resnap'])
    expect(resnap.exitCode, resnap.stderr).toBe(0)
    expect(await ssh('sudo ls /root')).not.toContain('resnap-marker')

    const status = JSON.parse((await box(env, ['secure', '--status', '--json'])).stdout)[0]
    expect(status).toMatchObject({role: 'worker', site: 'other.example', username: 'bob', inForce: true})
    expect(await ssh('sudo systemctl is-active box-lockdown.service')).toBe('active')
    // The early unit loaded the firewall before the network came up.
    const order = await ssh(
      'sudo journalctl -b -o short-monotonic --no-pager -u box-lockdown.service -u systemd-networkd.service',
    )
    expect(order.indexOf('box: apply the lockdown')).toBeGreaterThan(-1)
    expect(order.indexOf('box: apply the lockdown')).toBeLessThan(order.indexOf('systemd-networkd'))
    expect(await ssh('sudo journalctl -b -o cat --no-pager -u provisiond')).toContain('/persistent/runsecure succeeded')
    expect(await ssh('sudo sshd -T')).toContain('passwordauthentication no')
    expect(await ssh('sudo systemctl is-active serial-getty@ttyS0.service || true')).toBe('inactive')
  })
})
