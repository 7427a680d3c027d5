/**
 * One real booted guest for the ansible provisioner and forward_ports: auto. ansible-playbook
 * (Debian's ansible-core) runs on the host over the ssh settings `box ssh-config` prints:
 * extra vars, inventory groups and become are checked in the guest, and a failing playbook
 * fails `box provision` and `box up` with its exit code and the failed task. Servers started
 * in the guest get forwards on 127.0.0.1 within seconds, through which the host talks to
 * them; loopback-only, privileged and Boxfile-forwarded ports are left alone, and a taken
 * host port moves to a free one.
 */
import {mkdir, mkdtemp, readdir, readFile, rm, writeFile} from 'node:fs/promises'
import {connect, createServer, type Server} from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ensureBox} from '../../src/builder/index.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {testCacheDir} from '../support/cache.js'
import {box, type CliEnv} from '../support/cli.js'

const CONFIGURED = 28_281 // guest port the Boxfile forwards (from host port 28_291)
const FREE = 28_300 // guest port whose host port is free: forwarded from the same one
const TAKEN = 28_302 // guest port whose host port is taken on the host: moved
const LOOPBACK = 28_301 // listens on the guest's 127.0.0.1 only: cannot be forwarded
const PRIVILEGED = 900

const boxfile = (provisioners: string) => `box: reference
forward_ports: auto
forwarded_ports:
  - {guest: ${CONFIGURED}, host: 28291}
provisioners:
${provisioners}`

const SITE = `  - type: ansible
    name: site
    playbook: playbooks/site.yml
    extra_vars: {greeting: "hello from ansible", answer: 42}
    inventory_groups: {webservers: [default], databases: [db]}
    become: true
`
const FAILING = `  - {type: ansible, name: broken, playbook: playbooks/fail.yml, run: always}
`

// No python in the reference box: raw tasks, which need only a shell (and sudo for become).
const SITE_PLAYBOOK = `- hosts: webservers
  gather_facts: false
  tasks:
    - name: write what the host passed
      raw: echo "{{ greeting }} {{ answer }} {{ group_names | join(',') }}" > /tmp/ansible-vars && id -u > /tmp/ansible-uid
`
const FAILING_PLAYBOOK = `- hosts: all
  gather_facts: false
  tasks:
    - name: this one works
      raw: "true"
    - name: this one fails
      raw: echo about to fail; exit 3
    - name: never reached
      raw: touch /tmp/never
`

/** A TCP server for the guest (perl-base is in every Debian): greets each connection with its port. */
const GUEST_SERVER = `use IO::Socket::INET;
my ($address, $port) = @ARGV;
my $server = IO::Socket::INET->new(LocalAddr => $address, LocalPort => $port, Listen => 5, ReuseAddr => 1) or die "$port: $!";
while (my $client = $server->accept) { print $client "guest port $port\\n"; close $client }
`

/** The first line a TCP server at 127.0.0.1:port sends. */
function greeting(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1')
    let text = ''
    socket.setEncoding('utf8')
    socket.setTimeout(10_000, () => socket.destroy(new Error(`no greeting on ${port}`)))
    socket.on('data', (chunk: string) => (text += chunk))
    socket.on('end', () => resolve(text.trim()))
    socket.on('error', reject)
  })
}

/** Whether process `pid` runs (a zombie nobody reaps does not). */
async function running(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined)
  return stat !== undefined && !/^\) Z /.test(stat.slice(stat.lastIndexOf(')')))
}

/** Whether process `pid` ends within 10 s. */
async function ends(pid: number): Promise<boolean> {
  for (const deadline = Date.now() + 10_000; Date.now() < deadline; await sleep(200))
    if (!(await running(pid))) return true
  return false
}

interface Forward {
  guest: number
  host: number
  hostIp: string
  protocol: string
  ssh?: true
  auto?: true
}

describe('ansible provisioner and forward_ports: auto on a real guest', {timeout: 300_000}, () => {
  let root: string
  let env: CliEnv
  let up: Awaited<ReturnType<typeof box>>
  const ok = async (args: string[], input?: string) => {
    const result = await box(env, args, {input})
    expect(result.exitCode, `box ${args.join(' ')}: ${result.stderr}`).toBe(0)
    return result
  }
  const forwards = async () => JSON.parse((await ok(['port', '--json'])).stdout) as Forward[]

  beforeAll(async () => {
    const {path: boxFile} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {cacheDir: testCacheDir()})
    root = await mkdtemp(join(tmpdir(), 'box-ansible-forwards-'))
    env = {cwd: join(root, 'project'), dataDir: join(root, 'data'), cacheDir: testCacheDir()}
    await mkdir(join(env.cwd, 'playbooks'), {recursive: true})
    await writeFile(join(env.cwd, 'playbooks', 'site.yml'), SITE_PLAYBOOK)
    await writeFile(join(env.cwd, 'playbooks', 'fail.yml'), FAILING_PLAYBOOK)
    await writeFile(join(env.cwd, 'Boxfile'), boxfile(SITE))
    await ok(['add', 'reference', boxFile])
    up = await box(env, ['up'])
  })

  afterAll(async () => {
    if (env) await box(env, ['destroy', '-f'])
    if (root) await rm(root, {recursive: true, force: true})
  })

  it('up runs the playbook on the host against the guest: extra vars, groups, become', async () => {
    expect(up.exitCode, up.stderr).toBe(0)
    // ansible's own output, streamed with the machine's name.
    expect(up.stdout).toMatch(/^default: TASK \[write what the host passed\]/m)
    expect(up.stdout).toMatch(/^default: default +: ok=1 +changed=1 .*failed=0/m)
    const inGuest = await ok(['ssh', '-c', 'cat /tmp/ansible-vars /tmp/ansible-uid'])
    expect(inGuest.stdout).toBe('hello from ansible 42 webservers\n0')
    // Nothing of the run is left in the state dir (inventory, ssh config, extra vars).
    expect(
      (await readdir(join(env.cwd, '.box', 'machines', 'default'))).filter((name) => name.startsWith('ansible')),
    ).toEqual([])
  })

  it('a failing playbook fails box provision with its exit code and the failed task', async () => {
    await writeFile(join(env.cwd, 'Boxfile'), boxfile(FAILING))
    const failed = await box(env, ['provision'])
    expect(failed.exitCode).toBe(2)
    expect(failed.stdout).toMatch(/^default: fatal: \[default\]: FAILED!/m)
    expect(failed.stderr).toMatch(
      /provisioner "broken" of default failed: ansible-playbook exited with code 2 at task "this one fails"/,
    )
    expect((await box(env, ['ssh', '-c', 'test -e /tmp/never'])).exitCode).toBe(1)
  })

  it('forwards ports that start listening in the guest, on 127.0.0.1, while it runs', async () => {
    const before = await forwards()
    expect(before.filter((forward) => forward.auto)).toEqual([])
    const taken: Server = createServer()
    await new Promise<void>((resolve) => taken.listen(TAKEN, '127.0.0.1', resolve))
    try {
      await ok(['ssh', '-c', 'cat > /tmp/serve.pl'], GUEST_SERVER)
      const serve = (address: string, port: number, sudo = '') =>
        `${sudo}setsid perl /tmp/serve.pl ${address} ${port} </dev/null >/tmp/serve-${port}.log 2>&1 &`
      await ok([
        'ssh',
        '-c',
        [
          serve('0.0.0.0', FREE),
          serve('0.0.0.0', TAKEN),
          serve('127.0.0.1', LOOPBACK),
          serve('0.0.0.0', CONFIGURED),
          serve('0.0.0.0', PRIVILEGED, 'sudo -n '),
        ].join(' '),
      ])
      const deadline = Date.now() + 60_000
      let auto: Forward[] = []
      while (Date.now() < deadline) {
        auto = (await forwards()).filter((forward) => forward.auto)
        if (auto.length >= 2) break
        await sleep(1000)
      }
      auto.sort((a, b) => a.guest - b.guest)
      expect(auto.map((forward) => [forward.guest, forward.hostIp, forward.protocol])).toEqual([
        [FREE, '127.0.0.1', 'tcp'],
        [TAKEN, '127.0.0.1', 'tcp'],
      ])
      const moved = auto[1]!.host
      expect(auto[0]!.host).toBe(FREE)
      expect(moved).not.toBe(TAKEN)
      // The host reaches the guest's servers through them.
      expect(await greeting(FREE)).toBe(`guest port ${FREE}`)
      expect(await greeting(moved)).toBe(`guest port ${TAKEN}`)
      // The configured forward is left as the Boxfile set it, and still reaches its server.
      const configured = (await forwards()).find((forward) => forward.guest === CONFIGURED)!
      expect(configured).toEqual({guest: CONFIGURED, host: 28_291, hostIp: '127.0.0.1', protocol: 'tcp'})
      expect(await greeting(28_291)).toBe(`guest port ${CONFIGURED}`)
      // A few more rounds of the watcher: still nothing for the loopback and privileged ports.
      await sleep(5000)
      const guests = (await forwards()).filter((forward) => forward.auto).map((forward) => forward.guest)
      // In the order the watcher found them, which is the guest's: compared sorted.
      expect(guests.sort((a, b) => a - b)).toEqual([FREE, TAKEN])
      const listed = (await ok(['port'])).stdout.split('\n')
      expect(listed).toContain(`127.0.0.1:${FREE} → ${FREE}/tcp (auto)`)
      expect(listed).toContain(`127.0.0.1:${moved} → ${TAKEN}/tcp (auto)`)
      expect((await ok(['port', '--guest', String(TAKEN)])).stdout).toBe(String(moved))
    } finally {
      await new Promise((resolve) => taken.close(resolve))
    }
  })

  it('halt stops the watcher; up again fails on the failing playbook with its task', async () => {
    const stateDir = join(env.cwd, '.box', 'machines', 'default')
    const pid = Number((await readFile(join(stateDir, 'auto-forward.pid'), 'utf8')).trim())
    expect(pid).toBeGreaterThan(0)
    expect(await running(pid)).toBe(true)
    await ok(['halt'])
    expect(await ends(pid)).toBe(true)
    await expect(readFile(join(stateDir, 'auto-forwards.json'))).rejects.toThrow(/ENOENT/)
    const again = await box(env, ['up'])
    expect(again.exitCode).toBe(2)
    expect(again.stderr).toMatch(/ansible-playbook exited with code 2 at task "this one fails"/)
    // The watcher of this boot runs, and has added nothing yet (no server runs after the reboot).
    const newPid = Number((await readFile(join(stateDir, 'auto-forward.pid'), 'utf8')).trim())
    expect(newPid).not.toBe(pid)
    expect(await running(newPid)).toBe(true)
    expect((await forwards()).filter((forward) => forward.auto)).toEqual([])
  })

  it('destroy stops the watcher at once, before its next round could notice the machine is gone', async () => {
    const stateDir = join(env.cwd, '.box', 'machines', 'default')
    const pid = Number((await readFile(join(stateDir, 'auto-forward.pid'), 'utf8')).trim())
    expect(await running(pid)).toBe(true)
    await ok(['destroy', '-f'])
    // Not waited for: left alone, the watcher would end by itself only at its next poll (2 s).
    expect(await running(pid)).toBe(false)
    await expect(readdir(stateDir)).rejects.toThrow(/ENOENT/)
  })
})
