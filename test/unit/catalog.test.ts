import {mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {pathToFileURL} from 'node:url'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {COMPATIBLE_BOX_PROVIDERS} from '../../src/lib/box/metadata.js'
import {
  loadCatalog,
  parseCatalogText,
  resolveCatalog,
  resolveProviderUrl,
  type Catalog,
} from '../../src/lib/store/catalog.js'
import {parseCatalog} from '../support/catalog.js'
import {BoxError} from '../../src/lib/core/errors.js'

const sha = (digit: string) => digit.repeat(64)

const CATALOG = {
  name: 'org/worker',
  description: 'A worker box',
  versions: [
    {
      version: '1.0.0',
      status: 'active',
      providers: [
        {
          name: 'virtualbox',
          url: 'https://example.org/worker-1.0.0-vb.box',
          checksum_type: 'sha256',
          checksum: sha('1'),
        },
        {
          name: 'libvirt',
          url: 'https://example.org/worker-1.0.0-libvirt.box',
          checksum_type: 'SHA256',
          checksum: sha('2'),
        },
      ],
    },
    {
      version: '1.2.0',
      providers: [
        {
          name: 'qemu',
          url: 'https://example.org/worker-1.2.0-arm.box',
          architecture: 'arm64',
          checksum_type: 'sha256',
          checksum: sha('3'),
        },
        {
          name: 'qemu',
          url: 'https://example.org/worker-1.2.0.box',
          architecture: 'amd64',
          checksum_type: 'sha256',
          checksum: sha('4'),
        },
        {name: 'libvirt', url: 'https://example.org/worker-1.2.0-libvirt.box'},
      ],
    },
    {version: '1.10.0', providers: [{name: 'virtualbox', url: 'https://example.org/worker-1.10.0-vb.box'}]},
    {version: '2.0.0', status: 'revoked', providers: [{name: 'qemu', url: 'https://example.org/worker-2.0.0.box'}]},
    {
      version: '1.3.0',
      providers: [
        {name: 'libvirt', url: 'https://example.org/worker-1.3.0-libvirt.box', checksum_type: '', checksum: null},
      ],
    },
  ],
}

const catalog: Catalog = parseCatalog(CATALOG, 'https://example.org/worker.json')
const qemu = COMPATIBLE_BOX_PROVIDERS.qemu

describe('parseCatalog', () => {
  it('accepts Vagrant metadata, normalising checksum types and empty fields', () => {
    expect(catalog.name).toBe('org/worker')
    expect(catalog.versions[0].providers[1].checksum_type).toBe('sha256')
    expect(catalog.versions[4].providers[0]).toMatchObject({checksum_type: undefined, checksum: undefined})
  })

  it('names the location and the path of each problem', () => {
    const bad = {
      name: 'x',
      versions: [
        {version: '1.0', providers: [{name: 'qemu'}]},
        {version: 'latest', providers: []},
      ],
    }
    const error = (() => {
      try {
        parseCatalog(bad, 'https://example.org/bad.json')
      } catch (e) {
        return e as BoxError
      }
    })()
    expect(error).toBeInstanceOf(BoxError)
    expect(error!.message).toBe('https://example.org/bad.json is not a valid box catalog')
    expect(error!.detail).toContain('versions[0].providers[0].url')
    expect(error!.detail).toContain('versions[1].version: must be a version')
  })

  it('refuses an unknown checksum type', () => {
    const bad = {
      name: 'x',
      versions: [{version: '1.0', providers: [{name: 'qemu', url: 'u', checksum_type: 'crc32', checksum: 'ab'}]}],
    }
    expect(() => parseCatalog(bad, 'c.json')).toThrow(BoxError)
  })

  it('says when the text is not JSON', () => {
    expect(() => parseCatalogText('<html>', 'https://example.org/x')).toThrow(
      /https:\/\/example.org\/x is not a box catalog: not valid JSON/,
    )
  })
})

describe('Vagrant Cloud style metadata', () => {
  // The shape app.vagrantup.com serves: extra keys, nulls, upper-case architecture flags.
  const cloud = {
    tags: [],
    username: 'generic',
    name: 'generic/debian12',
    private: false,
    short_description: 'Generic Debian 12',
    description_html: '<p>…</p>',
    versions: [
      {
        version: '4.3.12',
        status: 'active',
        description_html: null,
        created_at: '2024-02-01T00:00:00.000Z',
        providers: [
          {
            name: 'libvirt',
            url: 'https://vagrantcloud.com/generic/boxes/debian12/versions/4.3.12/providers/libvirt/amd64/vagrant.box',
            checksum: null,
            checksum_type: null,
            architecture: 'amd64',
            default_architecture: true,
            original_url: 'https://example.org/x.box',
          },
          {
            name: 'virtualbox',
            url: 'https://vagrantcloud.com/…/virtualbox/amd64/vagrant.box',
            checksum: 'ab'.repeat(32),
            checksum_type: 'sha256',
            architecture: 'amd64',
            default_architecture: true,
          },
        ],
      },
      {
        version: '4.3.13',
        status: 'unreleased',
        providers: [{name: 'libvirt', url: 'https://vagrantcloud.com/x.box', architecture: 'amd64'}],
      },
    ],
  }

  it('parses, keeps unknown keys, and resolves the libvirt box for qemu', () => {
    const parsed = parseCatalog(cloud, 'https://vagrantcloud.com/generic/debian12')
    expect(parsed.username).toBe('generic')
    const resolved = resolveCatalog(parsed, {providers: qemu, architecture: 'amd64'})
    expect(resolved).toMatchObject({version: '4.3.12', provider: {name: 'libvirt'}, checksum: undefined})
    expect(() => resolveCatalog(parsed, {constraint: '4.3.13', providers: qemu})).toThrow(
      /no version of generic\/debian12 matches version 4.3.13/,
    )
  })
})

describe('resolveCatalog', () => {
  it('picks the newest version with a qemu-compatible provider, preferring the host architecture', () => {
    const resolved = resolveCatalog(catalog, {providers: qemu, architecture: 'amd64'})
    // 2.0.0 is revoked, 1.10.0 has only virtualbox.
    expect(resolved).toMatchObject({
      name: 'org/worker',
      version: '1.3.0',
      provider: {name: 'libvirt'},
      checksum: undefined,
    })
  })

  it('applies constraints', () => {
    expect(resolveCatalog(catalog, {constraint: '< 1.3', providers: qemu, architecture: 'amd64'})).toMatchObject({
      version: '1.2.0',
      provider: {name: 'qemu', url: 'https://example.org/worker-1.2.0.box'},
      checksum: {type: 'sha256', value: sha('4')},
    })
    expect(resolveCatalog(catalog, {constraint: '~> 1.0.0', providers: qemu}).version).toBe('1.0.0')
    expect(
      resolveCatalog(catalog, {constraint: '>= 1.0, != 1.3.0', providers: qemu, architecture: 'arm64'}),
    ).toMatchObject({
      version: '1.2.0',
      provider: {url: 'https://example.org/worker-1.2.0-arm.box'},
    })
    expect(resolveCatalog(catalog, {constraint: '= 1.0', providers: ['virtualbox']}).provider.url).toBe(
      'https://example.org/worker-1.0.0-vb.box',
    )
    expect(resolveCatalog(catalog, {constraint: '1.0.0', providers: qemu}).checksum).toEqual({
      type: 'sha256',
      value: sha('2'),
    })
  })

  it('orders versions numerically, not as text', () => {
    expect(resolveCatalog(catalog, {providers: ['virtualbox']}).version).toBe('1.10.0')
  })

  it('prefers providers in the order given', () => {
    expect(resolveCatalog(catalog, {constraint: '1.2.0', providers: ['libvirt', 'qemu']}).provider.name).toBe('libvirt')
    expect(
      resolveCatalog(catalog, {constraint: '1.2.0', providers: ['qemu', 'libvirt'], architecture: 'amd64'}).provider
        .name,
    ).toBe('qemu')
  })

  it('falls back to an entry without architecture when none matches exactly', () => {
    expect(resolveCatalog(catalog, {constraint: '1.2.0', providers: qemu, architecture: 's390x'}).provider.name).toBe(
      'libvirt',
    )
  })

  it('explains what is available when nothing matches', () => {
    let error: BoxError | undefined
    try {
      resolveCatalog(catalog, {constraint: '>= 1.4', providers: qemu})
    } catch (e) {
      error = e as BoxError
    }
    expect(error).toBeInstanceOf(BoxError)
    expect(error!.message).toBe('no version of org/worker matches version >= 1.4, provider qemu or libvirt')
    expect(error!.detail).toContain('1.10.0: virtualbox')
    expect(error!.detail).toContain('1.2.0: qemu (arm64), qemu (amd64), libvirt')
    expect(error!.detail).toContain('2.0.0: revoked (not offered)')
  })

  it('rejects a malformed constraint as a usage error', () => {
    expect(() => resolveCatalog(catalog, {constraint: '>= banana', providers: qemu})).toThrow(
      /invalid version constraint/,
    )
  })
})

describe('resolveProviderUrl and loadCatalog', () => {
  let dir: string
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'box-catalog-'))
    await writeFile(join(dir, 'catalog.json'), JSON.stringify(CATALOG))
  })
  afterAll(() => rm(dir, {recursive: true, force: true}))

  it('resolves relative provider URLs against the catalog', () => {
    expect(resolveProviderUrl('worker.box', 'https://example.org/boxes/catalog.json')).toBe(
      'https://example.org/boxes/worker.box',
    )
    expect(resolveProviderUrl('https://cdn.example.org/w.box', 'https://example.org/c.json')).toBe(
      'https://cdn.example.org/w.box',
    )
    expect(resolveProviderUrl('worker.box', join(dir, 'catalog.json'))).toBe(
      pathToFileURL(join(dir, 'worker.box')).toString(),
    )
    expect(resolveProviderUrl('/srv/w.box', join(dir, 'catalog.json'))).toBe('/srv/w.box')
  })

  it('loads a catalog from a path and a file:// URL, and names a missing one', async () => {
    expect((await loadCatalog(join(dir, 'catalog.json'))).name).toBe('org/worker')
    expect((await loadCatalog(pathToFileURL(join(dir, 'catalog.json')).toString())).versions).toHaveLength(5)
    await expect(loadCatalog(join(dir, 'nope.json'))).rejects.toThrow(`catalog not found: ${join(dir, 'nope.json')}`)
  })
})
