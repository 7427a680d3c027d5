import {chmod, mkdir, symlink, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {makeTempDir} from '../fixtures/boxes.js'
import {BIN} from '../support/cli.js'

const SCRIPTS = join(BIN, '..', '..', 'scripts')

/**
 * bin/box, the launcher npm puts on PATH. Node warns at start when the NODE_EXTRA_CA_CERTS
 * file cannot be read: that warning shows whether node was started with the variable.
 */
describe('the box launcher', () => {
  let dir: string
  let cleanup: () => Promise<void>

  beforeAll(async () => {
    ;({dir, cleanup} = await makeTempDir('box-launcher-'))
    await mkdir(join(dir, 'path'))
    await symlink(BIN, join(dir, 'path', 'box'))
  })

  afterAll(async () => {
    await cleanup?.()
  })

  const launch = (command: string, args: string[]) =>
    execa(command, args, {
      cwd: dir,
      reject: false,
      stdin: 'ignore',
      env: {NODE_EXTRA_CA_CERTS: join(dir, 'no-such-ca.pem'), BOX_DATA_DIR: join(dir, 'data'), NO_COLOR: '1'},
    })

  it('starts box ssh and box status without NODE_EXTRA_CA_CERTS, which they never need', async () => {
    for (const args of [['status'], ['status', '--json'], ['ssh', '-c', 'true']]) {
      const result = await launch(BIN, args)
      expect(result.exitCode, result.stderr).toBe(2)
      expect(result.stderr + result.stdout).toMatch(/no Boxfile found/)
      expect(result.stderr).not.toMatch(/extra certs/)
    }
  })

  it('keeps it for every other command (downloads may need it)', async () => {
    const result = await launch(BIN, ['list'])
    expect(result.exitCode, result.stderr).toBe(0)
    expect(result.stderr).toMatch(/Ignoring extra certs from `.*no-such-ca\.pem`/)
  })

  it('runs through the symlink npm puts on PATH', async () => {
    const result = await launch(join(dir, 'path', 'box'), ['--version'])
    expect(result.exitCode, result.stderr).toBe(0)
    expect(result.stdout).toMatch(/^box\/\d+\.\d+\.\d+ /)
  })

  it('says which Node.js box needs when node is not on PATH', async () => {
    // A PATH with sh and nothing else: the launcher must explain, not fail with "node: not found".
    await mkdir(join(dir, 'bare'), {recursive: true})
    await symlink('/bin/sh', join(dir, 'bare', 'sh')).catch(() => undefined)
    const result = await execa('/bin/sh', [BIN, 'list'], {
      cwd: dir,
      reject: false,
      stdin: 'ignore',
      env: {PATH: join(dir, 'bare')},
      extendEnv: false,
    })
    expect(result.exitCode).toBe(1)
    expect(result.stderr).toMatch(/box needs Node\.js >= 20\.19, and node is not on PATH/)
  })

  it('scripts/check-node accepts this Node.js', async () => {
    const result = await execa(join(SCRIPTS, 'check-node'), {reject: false})
    expect(result.exitCode, result.stderr).toBe(0)
  })

  /**
   * A folder whose `node` stands in for another Node.js version: a two-line script that answers
   * `node --version` as that version does (all check-node asks), and fails on anything else.
   */
  const otherNodeVersion = async (version: string) => {
    const folder = join(dir, `other-node-v${version}`)
    await mkdir(folder, {recursive: true})
    const standIn = join(folder, 'node')
    await writeFile(
      standIn,
      `#!/bin/sh\n# Stands in for Node.js ${version}: answers --version only.\nif [ "$1" = --version ]; then echo v${version}; exit 0; fi\nexit 99\n`,
    )
    await chmod(standIn, 0o755)
    return folder
  }

  it.each(['18.19.0', '20.18.3'])(
    'scripts/check-node refuses Node.js %s with the fix, exit code 1',
    async (version) => {
      const folder = await otherNodeVersion(version)
      const result = await execa(join(SCRIPTS, 'check-node'), {
        reject: false,
        env: {PATH: `${folder}:${process.env.PATH}`},
      })
      expect(result.exitCode).toBe(1)
      expect(result.stderr).toContain(
        `box needs Node.js >= 20.19; this machine has ${version} (${join(folder, 'node')}).`,
      )
      expect(result.stderr).toContain('Install Node.js 20.19 or newer (nodejs.org, NodeSource or nvm; Debian bookworm')
    },
  )

  it.each(['20.19.0', '22.1.0'])('scripts/check-node accepts Node.js %s', async (version) => {
    const folder = await otherNodeVersion(version)
    const result = await execa(join(SCRIPTS, 'check-node'), {
      reject: false,
      env: {PATH: `${folder}:${process.env.PATH}`},
    })
    expect(result.exitCode, result.stderr).toBe(0)
    expect(result.stderr).toBe('')
  })

  it('scripts/install-host-deps stops at the Node.js check, before apt-get', async () => {
    // PATH: the stand-in for Node.js 18.19.0 and only what the script needs to reach its first
    // line (bash, dirname). Had the check let it through, apt-get would be "command not found" (127).
    const folder = await otherNodeVersion('18.19.0')
    const tools = join(dir, 'install-tools')
    await mkdir(tools, {recursive: true})
    for (const tool of ['bash', 'dirname']) {
      const {stdout: path} = await execa('sh', ['-c', `command -v ${tool}`])
      await symlink(path, join(tools, tool)).catch(() => undefined)
    }
    const result = await execa(join(SCRIPTS, 'install-host-deps'), {
      reject: false,
      env: {PATH: `${folder}:${tools}`},
      extendEnv: false,
    })
    expect(result.exitCode, result.stderr).toBe(1)
    expect(result.stderr).toContain('box needs Node.js >= 20.19; this machine has 18.19.0')
    expect(result.stderr).not.toMatch(/apt-get/)
  })

  it('bin/box refuses an older Node.js with the fix, exit code 1', async () => {
    // bin/run.js judges the Node that runs it, so this stand-in is the real node with
    // process.versions.node set to 18.19.0 before run.js loads (--import).
    const folder = join(dir, 'node-reporting-v18.19.0')
    await mkdir(folder, {recursive: true})
    const preload = join(folder, 'report-v18.19.0.mjs')
    await writeFile(
      preload,
      "Object.defineProperty(process, 'versions', {value: {...process.versions, node: '18.19.0'}})\n",
    )
    await writeFile(
      join(folder, 'node'),
      `#!/bin/sh\n# Stands in for Node.js 18.19.0 (see ${preload}).\nexec ${process.execPath} --import ${preload} "$@"\n`,
    )
    await chmod(join(folder, 'node'), 0o755)
    for (const args of [['list'], ['status']]) {
      const result = await execa(BIN, args, {
        cwd: dir,
        reject: false,
        stdin: 'ignore',
        env: {PATH: `${folder}:${process.env.PATH}`, BOX_DATA_DIR: join(dir, 'data')},
      })
      expect(result.exitCode).toBe(1)
      expect(result.stderr).toContain(`Error: box needs Node.js >= 20.19; this is 18.19.0 (${process.execPath}).`)
      expect(result.stderr).toContain('Install Node.js 20.19 or newer')
      expect(result.stdout).toBe('')
    }
  })
})
