import {mkdir, symlink} from 'node:fs/promises'
import {join} from 'node:path'
import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {makeTempDir} from '../fixtures/boxes.js'
import {BIN} from '../support/cli.js'

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
    const result = await execa(join(BIN, '..', '..', 'scripts', 'check-node'), {reject: false})
    expect(result.exitCode, result.stderr).toBe(0)
  })
})
