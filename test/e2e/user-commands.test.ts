/**
 * The everyday commands on one real booted guest: `box port` (the forwards in force, a
 * taken host port moved), `box upload` / `box download` (files, folders, symlinks, stdin
 * and stdout, --compress, refusals), checked from the other side each time. A guest whose
 * `tar` sends a hostile stream shows that nothing lands outside the destination.
 */
import {createHash, randomBytes} from 'node:crypto'
import {lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, symlink, writeFile} from 'node:fs/promises'
import {createServer, type Server} from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {ensureBox} from '../../src/builder/index.js'
import {PROJECT_ROOT} from '../../src/lib/core/paths.js'
import {testCacheDir} from '../support/cache.js'
import {box, type CliEnv} from '../support/cli.js'

const TAKEN_HOST_PORT = 28_181
const BOXFILE = `box: reference
forwarded_ports:
  - {guest: 80, host: 28080}
  - {guest: 8081, host: ${TAKEN_HOST_PORT}}   # taken while box up runs: moves to a free port
`

const sha256 = (data: Buffer | string) => createHash('sha256').update(data).digest('hex')

/** Streams a compromised guest could send instead of the tar box asked for (python's tarfile writes them as given). */
const HOSTILE_TARS = `
import io, sys, tarfile
out, outside = sys.argv[1], sys.argv[2]
def tar(name, members):
    with tarfile.open(f"{out}/{name}.tar", "w", format=tarfile.GNU_FORMAT) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
def member(name, kind=tarfile.REGTYPE, data=b"pwned\\n", link=""):
    info = tarfile.TarInfo(name); info.type = kind; info.linkname = link
    if kind == tarfile.REGTYPE: info.size = len(data)
    else: data = None
    if kind == tarfile.DIRTYPE: info.mode = 0o755
    return info, data
tar("dotdot", [member("data/", tarfile.DIRTYPE), member("data/../../escaped")])
tar("through-symlink", [member("data/", tarfile.DIRTYPE), member("data/link", tarfile.SYMTYPE, link=outside), member("data/link/pwned")])
tar("absolute", [member("data/", tarfile.DIRTYPE), member(outside + "/pwned")])
tar("other-root", [member("data/", tarfile.DIRTYPE), member("elsewhere/pwned")])
tar("hard-link", [member("data/", tarfile.DIRTYPE), member("data/passwd", tarfile.LNKTYPE, link="../../etc/passwd")])
tar("device", [member("data/", tarfile.DIRTYPE), member("data/null", tarfile.CHRTYPE)])
`

describe('port, upload and download on a real guest', {timeout: 300_000}, () => {
  let root: string
  let env: CliEnv
  const ssh = async (command: string) => {
    const result = await box(env, ['ssh', '-c', command])
    expect(result.exitCode, `${command}: ${result.stderr}`).toBe(0)
    return result.stdout
  }
  const ok = async (args: string[], input?: string) => {
    const result = await box(env, args, {input})
    expect(result.exitCode, `box ${args.join(' ')}: ${result.stderr}`).toBe(0)
    return result
  }

  beforeAll(async () => {
    const {path: boxFile} = await ensureBox(join(PROJECT_ROOT, 'boxes', 'debian-bookworm'), {cacheDir: testCacheDir()})
    root = await mkdtemp(join(tmpdir(), 'box-user-commands-'))
    env = {cwd: join(root, 'project'), dataDir: join(root, 'data'), cacheDir: testCacheDir()}
    await mkdir(env.cwd)
    await ok(['add', 'reference', boxFile])
    await writeFile(join(env.cwd, 'Boxfile'), BOXFILE)
    const taken: Server = createServer()
    await new Promise<void>((resolve) => taken.listen(TAKEN_HOST_PORT, '127.0.0.1', resolve))
    try {
      await ok(['up'])
    } finally {
      await new Promise((resolve) => taken.close(resolve))
    }
  })

  afterAll(async () => {
    if (env) await box(env, ['destroy', '-f'])
    if (root) await rm(root, {recursive: true, force: true})
  })

  it('box port: the forwards in force, --guest for one host port, a clear error for others', async () => {
    const listed = (await ok(['port'])).stdout.split('\n')
    const sshPort = Number(/^ +Port (\d+)$/m.exec((await ok(['ssh-config'])).stdout)![1])
    const moved = Number((await ok(['port', '--guest', '8081'])).stdout)
    expect(moved).toBeGreaterThan(TAKEN_HOST_PORT)
    expect(listed).toEqual([
      `127.0.0.1:${sshPort} → 22/tcp (ssh)`,
      '127.0.0.1:28080 → 80/tcp',
      `127.0.0.1:${moved} → 8081/tcp`,
    ])
    expect((await ok(['port', 'default', '--guest', '80'])).stdout).toBe('28080')
    expect(JSON.parse((await ok(['port', '--json'])).stdout)).toEqual([
      {guest: 22, host: sshPort, hostIp: '127.0.0.1', protocol: 'tcp', ssh: true},
      {guest: 80, host: 28080, hostIp: '127.0.0.1', protocol: 'tcp'},
      {guest: 8081, host: moved, hostIp: '127.0.0.1', protocol: 'tcp'},
    ])
    const unknownPort = await box(env, ['port', '--guest', '81'])
    expect(unknownPort.exitCode).toBe(1)
    expect(unknownPort.stdout).toBe('')
    expect(unknownPort.stderr).toMatch(
      /guest port 81 of machine default is not forwarded; forwarded guest ports: 22\/tcp, 80\/tcp, 8081\/tcp/,
    )
    const unknownMachine = await box(env, ['port', 'web'])
    expect(unknownMachine.exitCode).toBe(2)
    expect(unknownMachine.stderr).toMatch(/unknown machine "web"/)
  })

  it('upload and download: a folder (symlink, empty folder) and files, plain and --compress, stdin and stdout', async () => {
    const tree = join(root, 'tree')
    await mkdir(join(tree, 'sub'), {recursive: true})
    await mkdir(join(tree, 'empty'))
    const blob = randomBytes(300_000)
    await writeFile(join(tree, 'a.txt'), 'first file\n')
    await writeFile(join(tree, 'sub', 'b.bin'), blob)
    await symlink('a.txt', join(tree, 'link'))

    // Into the login user's home (no destination), then a file renamed, compressed.
    await ok(['upload', tree])
    expect(await ssh('cd ~/tree && find . | sort && readlink link && sha256sum sub/b.bin | cut -d" " -f1')).toBe(
      ['.', './a.txt', './empty', './link', './sub', './sub/b.bin', 'a.txt', sha256(blob)].join('\n'),
    )
    await ok(['upload', '--compress', join(tree, 'sub', 'b.bin'), '/tmp/renamed.bin'])
    expect(await ssh('sha256sum /tmp/renamed.bin | cut -d" " -f1')).toBe(sha256(blob))
    await ok(['upload', '-', '/tmp/from-stdin.txt'], 'through stdin\n')
    await ok(['upload', '--compress', 'default', '-', '/tmp/from-stdin.gz.txt'], 'compressed stdin\n')
    expect(await ssh('cat /tmp/from-stdin.txt /tmp/from-stdin.gz.txt')).toBe('through stdin\ncompressed stdin')

    // Back to the host: the folder into a folder, compressed; a file under a new name; stdout.
    const back = join(root, 'back')
    await mkdir(back)
    await ok(['download', '--compress', '~/tree', back])
    expect(await readFile(join(back, 'tree', 'a.txt'), 'utf8')).toBe('first file\n')
    expect(sha256(await readFile(join(back, 'tree', 'sub', 'b.bin')))).toBe(sha256(blob))
    expect(await readlink(join(back, 'tree', 'link'))).toBe('a.txt')
    expect((await lstat(join(back, 'tree', 'empty'))).isDirectory()).toBe(true)
    await ok(['download', '/tmp/renamed.bin', join(back, 'copy.bin')])
    expect(sha256(await readFile(join(back, 'copy.bin')))).toBe(sha256(blob))
    expect((await ok(['download', '/tmp/from-stdin.txt', '-'])).stdout).toBe('through stdin')
    expect((await ok(['download', '--compress', '/tmp/from-stdin.gz.txt', '-'])).stdout).toBe('compressed stdin')
    expect(JSON.parse((await ok(['download', '--json', '/tmp/renamed.bin', back])).stdout)).toEqual({
      destination: join(back, 'renamed.bin'),
      bytes: blob.length,
    })
    // No temporary folder is left behind on either side.
    expect((await readdir(back)).sort()).toEqual(['copy.bin', 'renamed.bin', 'tree'])
    expect(await ssh('ls -A /tmp ~ | grep -c .box-upload || true')).toBe('0')
  })

  it('refuses: a missing source either way, an existing folder, a destination that is or replaces a symlink', async () => {
    const missingUpload = await box(env, ['upload', join(root, 'nothing-here'), '/tmp/'])
    expect(missingUpload.exitCode).toBe(2)
    expect(missingUpload.stderr).toMatch(/upload source .*nothing-here does not exist/)
    const missingDownload = await box(env, ['download', '/no/such/file', root])
    expect(missingDownload.exitCode).toBe(1)
    expect(missingDownload.stderr).toMatch(/no such file or folder in the guest: \/no\/such\/file/)
    const folderExists = await box(env, ['upload', join(root, 'tree'), '~'])
    expect(folderExists.exitCode).toBe(1)
    expect(folderExists.stderr).toMatch(/tree already exists in the guest as a folder/)

    const outside = join(root, 'outside')
    const target = join(root, 'target')
    await mkdir(outside)
    await mkdir(target)
    await symlink(outside, join(root, 'link-out'))
    const throughLink = await box(env, ['download', '/etc/hostname', join(root, 'link-out')])
    expect(throughLink.exitCode).toBe(1)
    expect(throughLink.stderr).toMatch(
      /download destination .*link-out is a symlink: box does not write through symlinks/,
    )
    await symlink(join(outside, 'hostname'), join(target, 'hostname'))
    const replacesLink = await box(env, ['download', '/etc/hostname', target])
    expect(replacesLink.exitCode).toBe(1)
    expect(replacesLink.stderr).toMatch(/target\/hostname is a symlink/)
    expect(await readdir(outside)).toEqual([])
    expect(await readdir(target)).toEqual(['hostname'])
  })

  it('a guest whose tar sends hostile streams: each refused before anything is written', async () => {
    const tars = join(root, 'hostile')
    const outside = join(root, 'outside-hostile')
    const target = join(root, 'target-hostile')
    await Promise.all([mkdir(tars), mkdir(outside), mkdir(target)])
    await execa('python3', ['-c', HOSTILE_TARS, tars, outside])
    await ok(['upload', tars, '/tmp/'])
    // First on the login PATH: the download script's `tar` is this one, sending the file named in /tmp/hostile/which.
    await ssh(
      `printf '#!/bin/sh\\nexec cat "/tmp/hostile/$(cat /tmp/hostile/which).tar"\\n' | sudo tee /usr/local/bin/tar >/dev/null && sudo chmod 755 /usr/local/bin/tar`,
    )
    try {
      const expected: Record<string, RegExp> = {
        dotdot: /the stream holds "data\/\.\.\/\.\.\/escaped", outside data/,
        'through-symlink': /"data\/link\/pwned": it would be written through a symlink of the copy/,
        absolute: /the stream holds "\/.*outside-hostile\/pwned", outside data/,
        'other-root': /the stream holds "elsewhere\/pwned", outside data/,
        'hard-link': /the stream holds "\.\.\/\.\.\/etc\/passwd", outside data/,
        device: /"data\/null": its type \(character-device\) is not a file, folder or link/,
      }
      await ssh('mkdir -p /tmp/data')
      for (const [name, message] of Object.entries(expected)) {
        await ssh(`echo ${name} > /tmp/hostile/which`)
        const result = await box(env, ['download', '/tmp/data', target])
        expect(result.exitCode, name).toBe(1)
        expect(result.stderr, name).toMatch(/download from default refused/)
        expect(result.stderr, name).toMatch(message)
        expect(await readdir(target), name).toEqual([])
        expect(await readdir(outside), name).toEqual([])
        expect(await readdir(root), name).not.toContain('escaped')
      }
    } finally {
      await ssh('sudo rm -f /usr/local/bin/tar')
    }
  })
})
