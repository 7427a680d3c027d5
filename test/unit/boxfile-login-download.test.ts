/**
 * Boxfile fields for boxes from the Vagrant world: ssh.username / ssh.private_key_path
 * (boxes with their own login conventions) and box_download_checksum(_type) (a plain
 * box URL checked while it downloads).
 */
import {chmod, mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {parseBoxfile} from '../../src/lib/boxfile/load.js'
import {BoxError} from '../../src/lib/core/errors.js'

let dir: string
let file: string

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'box-boxfile-login-'))
  file = join(dir, 'Boxfile')
})
afterEach(async () => {
  await rm(dir, {recursive: true, force: true})
})

const yaml = (...lines: string[]) => `${lines.join('\n')}\n`

/** The problems a Boxfile is rejected with, its path shortened to "Boxfile". */
async function problems(text: string): Promise<string[]> {
  const error = await parseBoxfile(file, text).then(
    () => undefined,
    (error: unknown) => error,
  )
  if (!(error instanceof BoxError)) throw new Error(`expected the Boxfile to be rejected, got ${String(error)}`)
  expect(error.exitCode).toBe(2)
  return error.message
    .split('\n')
    .slice(1)
    .map((line) => line.trim().replace(`${file}:`, 'Boxfile:'))
}

const SHA256 = 'a'.repeat(64)

describe('ssh.username and ssh.private_key_path', () => {
  it('resolves the key relative to the Boxfile, per machine over the top level', async () => {
    await writeFile(join(dir, 'team_key'), 'key', {mode: 0o600})
    await writeFile(join(dir, 'db_key'), 'key', {mode: 0o400})
    const boxfile = await parseBoxfile(
      file,
      yaml(
        'box: b',
        'ssh: {username: admin, private_key_path: team_key}',
        'machines:',
        '  web:',
        '  db:',
        '    ssh: {private_key_path: db_key}',
      ),
    )
    expect(boxfile.machines.map((machine) => machine.ssh)).toEqual([
      {username: 'admin', privateKeyPath: join(dir, 'team_key'), forwardAgent: false},
      {username: 'admin', privateKeyPath: join(dir, 'db_key'), forwardAgent: false},
    ])
  })

  it('leaves both unset by default (the box decides: vagrant unless box built it)', async () => {
    const boxfile = await parseBoxfile(file, yaml('box: b'))
    expect(boxfile.machines[0]!.ssh).toEqual({username: undefined, privateKeyPath: undefined, forwardAgent: false})
  })

  it('refuses a missing key and one that others can read, at the field', async () => {
    expect(await problems(yaml('box: b', 'ssh:', '  private_key_path: nowhere'))).toEqual([
      `Boxfile:3:21: ssh.private_key_path: no such file: ${join(dir, 'nowhere')}`,
    ])
    await writeFile(join(dir, 'open_key'), 'key')
    await chmod(join(dir, 'open_key'), 0o644)
    expect(await problems(yaml('box: b', 'machines:', '  web:', '    ssh: {private_key_path: open_key}'))).toEqual([
      `Boxfile:4:29: machines.web.ssh.private_key_path: ${join(dir, 'open_key')} is readable by others (mode 0644); ssh refuses such keys: chmod 600 ${join(dir, 'open_key')}`,
    ])
  })

  it('refuses a directory and an empty path', async () => {
    expect(await problems(yaml('box: b', 'ssh: {private_key_path: .}'))).toEqual([
      `Boxfile:2:25: ssh.private_key_path: no such file: ${dir}`,
    ])
    expect(await problems(yaml('box: b', 'ssh: {private_key_path: ""}'))).toEqual([
      'Boxfile:2:25: ssh.private_key_path: must not be empty: a private key file (relative to the Boxfile)',
    ])
  })
})

describe('box_download_checksum and box_download_checksum_type', () => {
  it('gives the machine the checksum, the type told from the length when left out', async () => {
    const boxfile = await parseBoxfile(
      file,
      yaml(
        'box: b',
        'box_url: https://example.org/b.box',
        `box_download_checksum: ${SHA256.toUpperCase()}`,
        'machines:',
        '  web:',
        '  db:',
        `    box_download_checksum: ${'b'.repeat(40)}`,
        '    box_download_checksum_type: sha1',
      ),
    )
    expect(boxfile.machines.map((machine) => machine.boxDownloadChecksum)).toEqual([
      {type: 'sha256', value: SHA256},
      {type: 'sha1', value: 'b'.repeat(40)},
    ])
  })

  it('has none by default', async () => {
    expect(
      (await parseBoxfile(file, yaml('box: b', 'box_url: https://example.org/b.box'))).machines[0]!.boxDownloadChecksum,
    ).toBeUndefined()
  })

  it('refuses a digest that does not fit its type, or whose type cannot be told', async () => {
    expect(
      await problems(
        yaml('box: b', 'box_url: b.box', `box_download_checksum: ${SHA256}`, 'box_download_checksum_type: sha512'),
      ),
    ).toEqual(['Boxfile:3:24: box_download_checksum: a sha512 digest has 128 hex digits, this one has 64'])
    expect(await problems(yaml('box: b', 'box_url: b.box', 'box_download_checksum: abc123'))).toEqual([
      'Boxfile:3:24: box_download_checksum: cannot tell the type of a 6-digit digest: set box_download_checksum_type (md5, sha1, sha256, sha384, sha512)',
    ])
  })

  it('refuses what is not a hex digest or a known type', async () => {
    expect(
      await problems(
        yaml('box: b', 'box_url: b.box', 'box_download_checksum: sha256:abcd', 'box_download_checksum_type: crc32'),
      ),
    ).toEqual([
      'Boxfile:3:24: box_download_checksum: must be a hex digest, as sha256sum prints it',
      'Boxfile:4:29: box_download_checksum_type: must be one of: md5, sha1, sha256, sha384, sha512',
    ])
  })

  it('needs box_url to check, and a digest for a type; a top-level problem is reported once', async () => {
    expect(await problems(yaml('box: b', `box_download_checksum: ${SHA256}`, 'machines:', '  web:', '  db:'))).toEqual([
      'Boxfile:2:24: box_download_checksum: checks the download from box_url, which is not set (an installed box is not downloaded)',
    ])
    expect(await problems(yaml('box: b', 'box_url: b.box', 'box_download_checksum_type: sha256'))).toEqual([
      'Boxfile:3:29: box_download_checksum_type: needs box_download_checksum (the digest to check the download against)',
    ])
  })
})

describe('box_download_ca_cert', () => {
  it('gives each machine the CA file as an absolute path, inherited or its own', async () => {
    await writeFile(join(dir, 'ca.pem'), '-----BEGIN CERTIFICATE-----\n')
    await writeFile(join(dir, 'db-ca.pem'), '-----BEGIN CERTIFICATE-----\n')
    const boxfile = await parseBoxfile(
      file,
      yaml(
        'box: b',
        'box_url: https://mirror.internal/b.json',
        'box_download_ca_cert: ca.pem',
        'machines:',
        '  web:',
        '  db:',
        '    box_download_ca_cert: ./db-ca.pem',
      ),
    )
    expect(boxfile.machines.map((machine) => machine.boxDownloadCaCert)).toEqual([
      join(dir, 'ca.pem'),
      join(dir, 'db-ca.pem'),
    ])
    expect((await parseBoxfile(file, yaml('box: b'))).machines[0]!.boxDownloadCaCert).toBeUndefined()
  })

  it('refuses a file that is not there', async () => {
    expect(await problems(yaml('box: b', 'box_download_ca_cert: nowhere.pem'))).toEqual([
      `Boxfile:2:23: box_download_ca_cert: no such file: ${join(dir, 'nowhere.pem')}`,
    ])
  })
})
