import {mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {pathToFileURL} from 'node:url'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {COMPATIBLE_BOX_PROVIDERS} from '../../src/lib/box/metadata.js'
import {
  catalogArchitecture,
  hostArchitecture,
  isCompatibleUpdate,
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
  it('picks the newest version with a qemu-compatible provider', () => {
    const resolved = resolveCatalog(catalog, {providers: qemu})
    // 2.0.0 is revoked, 1.10.0 has only virtualbox; 1.3.0's libvirt entry predates architectures (taken on any host).
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

  it('takes only entries for an architecture asked for by name (Vagrant: no fallback then)', () => {
    expect(() => resolveCatalog(catalog, {constraint: '1.2.0', providers: qemu, architecture: 's390x'})).toThrow(
      'no version of org/worker matches version 1.2.0, provider qemu or libvirt, architecture s390x',
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
    expect(error!.message).toBe(
      `no version of org/worker matches version >= 1.4, provider qemu or libvirt, architecture ${hostArchitecture()} (this host's)`,
    )
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

describe('Vagrant 2.4 architectures (architecture, default_architecture)', () => {
  const box = (url: string, architecture?: string, defaultArchitecture?: boolean) => ({
    name: 'qemu',
    url,
    ...(architecture === undefined ? {} : {architecture}),
    ...(defaultArchitecture === undefined ? {} : {default_architecture: defaultArchitecture}),
  })
  const withProviders = (providers: unknown[]): Catalog =>
    parseCatalog({name: 'acme/multi', versions: [{version: '1.0.0', providers}]}, 'multi.json')
  const pick = (catalog: Catalog, architecture?: string | null) =>
    resolveCatalog(catalog, {providers: ['qemu'], architecture}).provider.url
  const host = hostArchitecture()
  const other = host === 'arm64' ? 'amd64' : 'arm64'

  it("names Node's architectures as Vagrant does", () => {
    expect(catalogArchitecture('x64')).toBe('amd64')
    expect(catalogArchitecture('ia32')).toBe('i386')
    expect(catalogArchitecture('arm64')).toBe('arm64')
    expect(catalogArchitecture('riscv64')).toBe('riscv64')
    expect(hostArchitecture()).toBe(catalogArchitecture(process.arch))
  })

  it("takes the host's architecture by default, wherever the entry sits and whichever is flagged default", () => {
    const catalog = withProviders([box('other.box', other, true), box('host.box', host, false)])
    expect(pick(catalog)).toBe('host.box')
    expect(pick(catalog, 'auto')).toBe('host.box')
  })

  it('falls back to the entry marked architecture "unknown" and default_architecture, as Vagrant Cloud serves old uploads', () => {
    expect(pick(withProviders([box('other.box', other, false), box('unknown.box', 'unknown', true)]))).toBe(
      'unknown.box',
    )
    // "unknown" without the flag is no fallback, and neither is another architecture flagged default.
    expect(() => pick(withProviders([box('other.box', other, true), box('unknown.box', 'unknown', false)]))).toThrow(
      `no version of acme/multi matches any version, provider qemu, architecture ${host} (this host's)`,
    )
  })

  it('takes the single entry of a catalog from before architectures (no default_architecture field)', () => {
    expect(pick(withProviders([box('legacy.box')]))).toBe('legacy.box')
    expect(pick(withProviders([box('legacy.box', other)]))).toBe('legacy.box')
    // Two entries, or one that knows about architectures: no guess.
    expect(() => pick(withProviders([box('a.box'), box('b.box')]))).toThrow(BoxError)
    expect(() => pick(withProviders([box('flagged.box', other, false)]))).toThrow(BoxError)
  })

  it('with a named architecture takes exactly it; with null the default_architecture entry', () => {
    const catalog = withProviders([
      box('host.box', host, false),
      box('other.box', other, true),
      box('s390x.box', 's390x'),
    ])
    expect(pick(catalog, 's390x')).toBe('s390x.box')
    expect(pick(catalog, other)).toBe('other.box')
    expect(() => pick(withProviders([box('legacy.box')]), 'mips')).toThrow(
      'no version of acme/multi matches any version, provider qemu, architecture mips',
    )
    expect(pick(catalog, null)).toBe('other.box')
    expect(pick(withProviders([box('legacy.box')]), null)).toBe('legacy.box')
  })

  it('picks per version: an older version for this host wins over a newer one without it', () => {
    const catalog = parseCatalog(
      {
        name: 'acme/multi',
        versions: [
          {version: '2.0.0', providers: [box('2-other.box', other, true)]},
          {version: '1.0.0', providers: [box('1-other.box', other, true), box('1-host.box', host, false)]},
        ],
      },
      'multi.json',
    )
    expect(resolveCatalog(catalog, {providers: ['qemu']})).toMatchObject({
      version: '1.0.0',
      provider: {url: '1-host.box'},
    })
  })
})

describe('isCompatibleUpdate (Vagrant: no update from a known architecture to "unknown")', () => {
  const host = hostArchitecture()
  const entry = (url: string, architecture?: string, defaultArchitecture?: boolean) => ({
    name: 'qemu',
    url,
    ...(architecture === undefined ? {} : {architecture}),
    ...(defaultArchitecture === undefined ? {} : {default_architecture: defaultArchitecture}),
  })
  const catalogOf = (current: unknown, next: unknown): Catalog =>
    parseCatalog(
      {
        name: 'acme/multi',
        versions: [
          {version: '1.0.0', providers: [current]},
          {version: '2.0.0', providers: [next]},
        ],
      },
      'multi.json',
    )
  const compatible = (catalog: Catalog, installed = '1.0.0', architecture?: string | null) =>
    isCompatibleUpdate(
      catalog,
      {version: installed, providers: ['qemu']},
      resolveCatalog(catalog, {providers: ['qemu'], architecture}),
      architecture,
    )

  it('refuses a host-architecture box moving to an "unknown" entry, unless the choice is null', () => {
    const catalog = catalogOf(entry('1.box', host, true), entry('2.box', 'unknown', true))
    expect(resolveCatalog(catalog, {providers: ['qemu']}).version).toBe('2.0.0')
    expect(compatible(catalog)).toBe(false)
    expect(compatible(catalog, '1.0', null)).toBe(true)
  })

  it('allows unknown → unknown, pre-architecture → unknown, known → known, and a version the catalog dropped', () => {
    expect(compatible(catalogOf(entry('1.box', 'unknown', true), entry('2.box', 'unknown', true)))).toBe(true)
    expect(compatible(catalogOf(entry('1.box'), entry('2.box', 'unknown', true)))).toBe(true)
    expect(compatible(catalogOf(entry('1.box', host, true), entry('2.box', host, true)))).toBe(true)
    expect(compatible(catalogOf(entry('1.box', host, true), entry('2.box', 'unknown', true)), '0.9.0')).toBe(true)
    // The same version written differently is the same version.
    expect(compatible(catalogOf(entry('1.box', host, true), entry('2.box', 'unknown', true)), '1.0')).toBe(false)
  })
})
