import {existsSync, statSync} from 'node:fs'
import {mkdtemp, readFile, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {execa} from 'execa'
import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {
  BOX_INSECURE_KEY,
  insecureKeyBlobs,
  insecureKeysFor,
  stageInsecureKeys,
  VAGRANT_INSECURE_KEYS,
} from '../../src/lib/machine/login-keys.js'

describe('the insecure keys a new machine is reached with', () => {
  let dir: string
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'box-login-keys-'))
  })
  afterAll(async () => {
    await rm(dir, {recursive: true, force: true})
  })

  it('offers the box convention first: box key for boxes built by box, Vagrant pair for others', () => {
    expect(insecureKeysFor(true)).toEqual([BOX_INSECURE_KEY, ...VAGRANT_INSECURE_KEYS])
    expect(insecureKeysFor(false)).toEqual([...VAGRANT_INSECURE_KEYS, BOX_INSECURE_KEY])
  })

  it('ships private halves that match their public halves (ssh-keygen -y), mode 0600 once staged', async () => {
    const staged = await stageInsecureKeys(dir, dir)
    expect(staged.keyFiles).toHaveLength(3)
    const blobs = await insecureKeyBlobs()
    for (const [index, file] of staged.keyFiles.entries()) {
      expect((statSync(file).mode & 0o777).toString(8)).toBe('600')
      const derived = (await execa('ssh-keygen', ['-y', '-f', file])).stdout.trim().split(/\s+/)[1]
      const source = insecureKeysFor(false)[index]!
      expect(derived).toBe((await readFile(`${source}.pub`, 'utf8')).trim().split(/\s+/)[1])
      expect(blobs).toContain(derived)
    }
    await staged.remove()
    expect(existsSync(staged.keyFiles[0]!)).toBe(false)
  })

  it("includes both halves of Vagrant's published pair (RSA and ed25519)", async () => {
    const types = await Promise.all(
      VAGRANT_INSECURE_KEYS.map(async (key) => (await readFile(`${key}.pub`, 'utf8')).split(' ')[0]),
    )
    expect(types.sort()).toEqual(['ssh-ed25519', 'ssh-rsa'])
  })
})
