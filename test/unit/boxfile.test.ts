import {mkdir, mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {findBoxfile} from '../../src/lib/boxfile/find.js'
import {renderBoxfile} from '../../src/lib/boxfile/init.js'
import {loadBoxfile, parseBoxfile} from '../../src/lib/boxfile/load.js'
import {parseMemory} from '../../src/lib/boxfile/schema.js'
import type {Boxfile} from '../../src/lib/boxfile/types.js'
import {BoxError} from '../../src/lib/core/errors.js'
import {selectMachines} from '../../src/lib/machine/project.js'

let dir: string
let file: string

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'box-boxfile-'))
  file = join(dir, 'Boxfile')
})
afterEach(async () => {
  await rm(dir, {recursive: true, force: true})
})

/** Lines of YAML joined, so each test shows the file whose line numbers it asserts. */
const yaml = (...lines: string[]) => `${lines.join('\n')}\n`

const parse = (text: string): Promise<Boxfile> => parseBoxfile(file, text)

/** The problems a Boxfile is rejected with, file path shortened to "Boxfile". */
async function problems(text: string): Promise<string[]> {
  const error = await parse(text).then(
    () => undefined,
    (error: unknown) => error,
  )
  if (!(error instanceof BoxError)) throw new Error(`expected the Boxfile to be rejected, got ${String(error)}`)
  expect(error.exitCode).toBe(2)
  const [header, ...lines] = error.message.split('\n')
  expect(header).toBe(`invalid Boxfile ${file}:`)
  return lines.map((line) => line.trim().replace(`${file}:`, 'Boxfile:'))
}

describe('defaults', () => {
  it('gives a Boxfile with only a box one machine named default with the worker defaults', async () => {
    const boxfile = await parse(yaml('box: debian-bookworm'))
    expect(boxfile.file).toBe(file)
    expect(boxfile.dir).toBe(dir)
    expect(boxfile.machines).toEqual([
      {
        name: 'default',
        box: 'debian-bookworm',
        boxUrl: undefined,
        boxVersion: undefined,
        provider: 'qemu',
        cpus: 2,
        memoryMiB: 1024,
        resnap: 'always',
        resnapSet: false,
        forwardedPorts: [],
        forwardPorts: 'off',
        syncedFolders: [],
        provisioners: [],
        ssh: {username: undefined, forwardAgent: false},
        hostname: undefined,
        site: undefined,
        directorPort: 8443,
      },
    ])
  })

  it('fills in list item defaults: loopback tcp ports, privileged run-once shell provisioners', async () => {
    await writeFile(join(dir, 'setup.sh'), 'echo hi\n')
    const [machine] = (
      await parse(
        yaml(
          'box: debian-bookworm',
          'forwarded_ports:',
          '  - {guest: 80, host: 8080}',
          'synced_folders:',
          '  - {source: ., destination: /srv/project}',
          'provisioners:',
          '  - {type: shell, path: setup.sh, args: [--count, 2, true], env: {N: 1}}',
          '  - {type: shell, inline: "echo hello"}',
          '  - {type: file, source: setup.sh, destination: ~/setup.sh}',
        ),
      )
    ).machines
    expect(machine!.forwardedPorts).toEqual([{guest: 80, host: 8080, protocol: 'tcp', hostIp: '127.0.0.1'}])
    expect(machine!.syncedFolders).toEqual([{source: dir, destination: '/srv/project', exclude: [], disabled: false}])
    expect(machine!.provisioners).toEqual([
      {
        type: 'shell',
        name: 'setup.sh',
        inline: undefined,
        path: join(dir, 'setup.sh'),
        args: ['--count', '2', 'true'],
        env: {N: '1'},
        privileged: true,
        run: 'once',
      },
      {
        type: 'shell',
        name: 'shell #2',
        inline: 'echo hello',
        path: undefined,
        args: [],
        env: {},
        privileged: true,
        run: 'once',
      },
      {type: 'file', name: 'file #3', source: join(dir, 'setup.sh'), destination: '~/setup.sh', run: 'once'},
    ])
  })

  it('resolves a relative box_url against the Boxfile directory and keeps URLs as they are', async () => {
    const local = await parse(yaml('box: b', 'box_url: boxes/b.box'))
    expect(local.machines[0]!.boxUrl).toBe(join(dir, 'boxes', 'b.box'))
    const remote = await parse(yaml('box: org/b', 'box_url: https://example.org/b.json', 'box_version: ">= 1.2, < 2"'))
    expect(remote.machines[0]).toMatchObject({
      box: 'org/b',
      boxUrl: 'https://example.org/b.json',
      boxVersion: '>= 1.2, < 2',
    })
  })
})

describe('memory', () => {
  it.each([
    [1024, 1024],
    ['1024', 1024],
    ['512M', 512],
    ['512MiB', 512],
    ['2G', 2048],
    ['2g', 2048],
    ['1.5GB', 1536],
    ['1T', 1024 * 1024],
  ])('%j is %i MiB', (input, mib) => {
    expect(parseMemory(input)).toBe(mib)
  })

  it.each([0, -1, 1.5, '0.3M', 'lots', '2 X', null, true])('%j is not a memory size', (input) => {
    expect(parseMemory(input)).toBeUndefined()
  })

  it('normalises a size string in the Boxfile to MiB', async () => {
    expect((await parse(yaml('box: b', 'memory: 2G'))).machines[0]!.memoryMiB).toBe(2048)
  })

  it('rejects a size with no meaning and a suspiciously small one at their lines', async () => {
    expect(await problems(yaml('box: b', 'memory: lots'))).toEqual([
      'Boxfile:2:9: memory: must be MiB as a whole number (1024) or a size with a unit: "512M", "2G"',
    ])
    expect(await problems(yaml('box: b', 'cpus: 1', 'memory: 2'))).toEqual([
      'Boxfile:3:9: memory: 2 MiB is too small (at least 64; did you mean "2G"?)',
    ])
  })
})

describe('several machines', () => {
  it('applies top-level fields as defaults, machine fields override, lists are inherited first', async () => {
    const boxfile = await parse(
      yaml(
        'box: debian-bookworm',
        'cpus: 4',
        'provisioners:',
        '  - {type: shell, inline: "echo common", name: common}',
        'ssh: {username: worker}',
        'machines:',
        '  worker:',
        '    memory: 2G',
        '  director:',
        '    box: org/director',
        '    resnap: never',
        '    provider: virtualbox',
        '    ssh: {forward_agent: true}',
        '    provisioners:',
        '      - {type: shell, inline: "echo director", run: always}',
        '    forwarded_ports:',
        '      - {guest: 443, host: 8443, host_ip: 0.0.0.0}',
        '  spare:',
      ),
    )
    expect(boxfile.machines.map((machine) => machine.name)).toEqual(['worker', 'director', 'spare'])
    const [worker, director, spare] = boxfile.machines
    expect(worker).toMatchObject({
      box: 'debian-bookworm',
      cpus: 4,
      memoryMiB: 2048,
      resnap: 'always',
      provider: 'qemu',
      ssh: {username: 'worker', forwardAgent: false},
    })
    expect(worker!.provisioners.map((p) => p.name)).toEqual(['common'])
    expect(director).toMatchObject({
      box: 'org/director',
      cpus: 4,
      memoryMiB: 1024,
      resnap: 'never',
      provider: 'virtualbox',
      ssh: {username: 'worker', forwardAgent: true},
    })
    expect(director!.provisioners.map((p) => [p.name, p.run])).toEqual([
      ['common', 'once'],
      ['shell #2', 'always'],
    ])
    expect(director!.forwardedPorts).toEqual([{guest: 443, host: 8443, protocol: 'tcp', hostIp: '0.0.0.0'}])
    expect(spare).toMatchObject({box: 'debian-bookworm', cpus: 4, memoryMiB: 1024, forwardedPorts: []})
  })

  it('requires a box for every machine, at the machine that lacks one', async () => {
    expect(await problems(yaml('cpus: 1', 'machines:', '  a:', '    box: one', '  b:', '    cpus: 2'))).toEqual([
      'Boxfile:6:5: machines.b.box: required: the name of a box in the store (see box list), e.g. debian-bookworm',
    ])
    expect(await problems(yaml('cpus: 1'))).toEqual([
      'Boxfile:1:1: box: required: the name of a box in the store (see box list), e.g. debian-bookworm',
    ])
  })

  it('rejects a machine name twice (YAML) and names that differ only in case', async () => {
    expect(await problems(yaml('box: b', 'machines:', '  web: {}', '  db: {}', '  web: {}'))).toEqual([
      'Boxfile:5:3: Map keys must be unique',
    ])
    expect(await problems(yaml('box: b', 'machines:', '  web:', '    cpus: 1', '  Web:', '    cpus: 2'))).toEqual([
      'Boxfile:6:5: machines.Web: machine name differs from "web" only in case; machine names must differ in more than case',
    ])
  })

  it('rejects machine names that cannot be directory names, and an empty machines map', async () => {
    expect(await problems(yaml('box: b', 'machines:', '  "my machine":', '    cpus: 1'))).toEqual([
      'Boxfile:4:5: machines.my machine: machine names use letters, digits, ".", "_", "-" and start with a letter or digit',
    ])
    expect(await problems(yaml('box: b', 'machines: {}'))).toEqual([
      'Boxfile:2:11: machines: must name at least one machine (or leave out machines: for one machine named default)',
    ])
  })

  it('selectMachines picks machines by name in the order asked, all for none, and lists the known ones for an unknown name', async () => {
    const boxfile = await parse(yaml('box: b', 'machines:', '  web:', '  db:', '  cache:'))
    expect(selectMachines(boxfile, []).map((m) => m.name)).toEqual(['web', 'db', 'cache'])
    expect(selectMachines(boxfile, ['cache', 'web', 'cache']).map((m) => m.name)).toEqual(['cache', 'web'])
    expect(() => selectMachines(boxfile, ['wbe'])).toThrow(
      `unknown machine "wbe" in ${file}; its machines: web, db, cache`,
    )
    expect(() => selectMachines(boxfile, ['x', 'y'])).toThrow('unknown machines "x", "y"')
  })

  it('whereField points at the machine own setting, else the inherited top-level one', async () => {
    const boxfile = await parse(yaml('box: b', 'cpus: 1', 'machines:', '  web:', '    cpus: 3', '  db:'))
    expect(boxfile.whereField('web', 'cpus')).toBe(`${file}:5:11`)
    expect(boxfile.whereField('db', 'cpus')).toBe(`${file}:2:7`)
    expect(boxfile.whereField('db', 'box')).toBe(`${file}:1:6`)
  })
})

describe('unknown fields and bad values name the position, the field and what is accepted', () => {
  it('unknown top-level field', async () => {
    expect(await problems(yaml('box: b', 'memroy: 2G'))).toEqual([
      'Boxfile:2:9: memroy: unknown field (accepted: box, box_url, box_version, box_download_checksum, box_download_checksum_type, box_download_ca_cert, provider, cpus, memory, resnap, forwarded_ports, forward_ports, synced_folders, provisioners, ssh, hostname, site, director_port, machines)',
    ])
  })

  it('unknown field inside a machine, a port, a provisioner and ssh', async () => {
    expect(
      await problems(
        yaml(
          'box: b',
          'ssh: {user: me}',
          'forwarded_ports:',
          '  - {guest: 22, host: 2222, proto: tcp}',
          'provisioners:',
          '  - type: file',
          '    source: .',
          '    destination: /tmp/x',
          '    mode: 644',
          'machines:',
          '  web:',
          '    machines: {}',
        ),
      ),
    ).toEqual([
      'Boxfile:2:13: ssh.user: unknown field (accepted: username, private_key_path, forward_agent)',
      'Boxfile:4:36: forwarded_ports.0.proto: unknown field (accepted: guest, host, protocol, host_ip)',
      'Boxfile:9:11: provisioners.0.mode: unknown field (accepted: type, name, source, destination, run)',
      'Boxfile:12:15: machines.web.machines: unknown field (accepted: box, box_url, box_version, box_download_checksum, box_download_checksum_type, box_download_ca_cert, provider, cpus, memory, resnap, forwarded_ports, forward_ports, synced_folders, provisioners, ssh, hostname, site, director_port)',
    ])
  })

  it('enums list their values', async () => {
    expect(
      await problems(
        yaml(
          'box: b',
          'provider: libvirt',
          'resnap: sometimes',
          'forwarded_ports:',
          '  - {guest: 53, host: 5353, protocol: sctp}',
          'provisioners:',
          '  - {type: shell, inline: "true", run: twice}',
          '  - {type: puppet, manifest: site.pp}',
          'forward_ports: always',
        ),
      ),
    ).toEqual([
      'Boxfile:2:11: provider: must be one of: qemu, virtualbox',
      'Boxfile:3:9: resnap: must be one of: always, never',
      'Boxfile:5:39: forwarded_ports.0.protocol: must be one of: tcp, udp',
      'Boxfile:7:40: provisioners.0.run: must be one of: once, always, never',
      'Boxfile:8:12: provisioners.1.type: must be one of: shell, file, ansible',
      'Boxfile:9:16: forward_ports: must be one of: auto, off',
    ])
  })

  it('numbers, booleans, names and lists of the wrong kind', async () => {
    expect(
      await problems(
        yaml(
          'box: "Debian Bookworm"',
          'cpus: 0',
          'hostname: worker_1',
          'site: -example.org',
          'director_port: 70000',
          'synced_folders: .',
          'provisioners:',
          '  - {type: shell, inline: "true", privileged: yes, env: {1X: a}, args: --verbose}',
        ),
      ),
    ).toEqual([
      'Boxfile:1:6: box: must be a box name such as debian-bookworm or org/name (letters, digits, ".", "_", "-")',
      'Boxfile:2:7: cpus: must be a whole number of CPUs, at least 1',
      'Boxfile:3:11: hostname: must be a host name such as worker-1 or worker-1.example.org (letters, digits and "-" in dot-separated labels)',
      'Boxfile:4:7: site: must be a host name such as example.org (letters, digits and "-" in dot-separated labels)',
      'Boxfile:5:16: director_port: must be a port number 1-65535',
      'Boxfile:6:17: synced_folders: must be a list, e.g. [{source: ., destination: /srv/project}]',
      'Boxfile:8:47: provisioners.0.privileged: must be true or false',
      'Boxfile:8:62: provisioners.0.env.1X: environment variable names use letters, digits and "_" and do not start with a digit',
      'Boxfile:8:72: provisioners.0.args: must be a list of arguments, e.g. [--verbose, 2]',
    ])
  })

  it('box_version syntax and box_url schemes', async () => {
    expect(await problems(yaml('box: b', 'box_version: ">= 1.2,, < 2"'))).toEqual([
      'Boxfile:2:14: box_version: empty requirement in ">= 1.2,, < 2" (a stray comma?)',
    ])
    expect(await problems(yaml('box: b', 'box_version: "=> 1.2"'))).toEqual([
      'Boxfile:2:14: box_version: "=> 1.2" is not a requirement (expected an operator = != > < >= <= ~> and a version, e.g. ">= 1.2")',
    ])
    expect(await problems(yaml('box: b', 'box_url: ftp://example.org/b.box'))).toEqual([
      'Boxfile:2:10: box_url: must be an http://, https:// or file:// URL, or a path (relative to the Boxfile)',
    ])
  })

  it('required fields of list items', async () => {
    expect(
      await problems(
        yaml(
          'box: b',
          'forwarded_ports:',
          '  - {guest: 80}',
          'synced_folders:',
          '  - {source: .}',
          'provisioners:',
          '  - {type: file, source: .}',
        ),
      ),
    ).toEqual([
      'Boxfile:3:5: forwarded_ports.0.host: required: the host port number (1-65535)',
      'Boxfile:5:5: synced_folders.0.destination: required: an absolute guest path such as /srv/project',
      'Boxfile:7:5: provisioners.0.destination: required: a guest path such as /etc/app.conf or ~/app.conf',
    ])
  })

  it('YAML syntax errors have a position too', async () => {
    const [problem] = await problems(yaml('box: b', 'cpus: [1', 'memory: 2G'))
    expect(problem).toMatch(/^Boxfile:3:\d+: /)
  })
})

describe('forwarded ports', () => {
  it('rejects host and guest ports outside 1-65535', async () => {
    expect(
      await problems(
        yaml(
          'box: b',
          'forwarded_ports:',
          '  - {guest: 80, host: 0}',
          '  - {guest: 70000, host: 8080}',
          '  - {guest: 22, host: 22.5}',
        ),
      ),
    ).toEqual([
      'Boxfile:3:23: forwarded_ports.0.host: must be a port number 1-65535',
      'Boxfile:4:13: forwarded_ports.1.guest: must be a port number 1-65535',
      'Boxfile:5:23: forwarded_ports.2.host: must be a port number 1-65535',
    ])
  })

  it('rejects a host_ip that is not an address', async () => {
    expect(
      await problems(yaml('box: b', 'forwarded_ports:', '  - {guest: 80, host: 8080, host_ip: localhost}')),
    ).toEqual([
      'Boxfile:3:38: forwarded_ports.0.host_ip: must be an IP address such as 127.0.0.1 (0.0.0.0 exposes the port to the network)',
    ])
  })

  it('rejects one host port forwarded twice in a machine; other protocols and addresses may share it', async () => {
    expect(
      await problems(
        yaml(
          'box: b',
          'forwarded_ports:',
          '  - {guest: 80, host: 8080}',
          '  - {guest: 53, host: 8080, protocol: udp}',
          '  - {guest: 81, host: 8080, host_ip: 127.0.0.2}',
          '  - {guest: 82, host: 8080}',
        ),
      ),
    ).toEqual([`Boxfile:6:23: forwarded_ports.3.host: host port 8080/tcp is already forwarded at ${file}:3:23`])
  })

  it('treats 0.0.0.0 as overlapping every address', async () => {
    expect(
      await problems(
        yaml(
          'box: b',
          'forwarded_ports:',
          '  - {guest: 80, host: 8080, host_ip: 0.0.0.0}',
          '  - {guest: 81, host: 8080, host_ip: 127.0.0.2}',
        ),
      ),
    ).toEqual([`Boxfile:4:23: forwarded_ports.1.host: host port 8080/tcp is already forwarded at ${file}:3:23`])
  })

  it('rejects one host port in two machines, and a top-level port inherited by several machines', async () => {
    expect(
      await problems(
        yaml(
          'box: b',
          'machines:',
          '  web:',
          '    forwarded_ports:',
          '      - {guest: 80, host: 8080}',
          '  db:',
          '    forwarded_ports:',
          '      - {guest: 5432, host: 8080}',
        ),
      ),
    ).toEqual([
      `Boxfile:8:29: machines.db.forwarded_ports.0.host: host port 8080/tcp is already forwarded by machine web at ${file}:5:27`,
    ])
    expect(
      await problems(
        yaml('box: b', 'forwarded_ports:', '  - {guest: 80, host: 8080}', 'machines:', '  web:', '  db:', '  cache:'),
      ),
    ).toEqual([
      'Boxfile:3:23: forwarded_ports.0.host: host port 8080/tcp is set for every machine (web, db, cache), which cannot all forward it: give each machine its own under machines.NAME.forwarded_ports',
    ])
  })
})

describe('synced folders', () => {
  it('resolves the source, requires it to exist unless disabled, and the destination to be absolute and unique', async () => {
    await mkdir(join(dir, 'src'))
    const boxfile = await parse(
      yaml(
        'box: b',
        'synced_folders:',
        '  - {source: src, destination: /srv/src, exclude: [.git/]}',
        '  - {source: gone, destination: /srv/gone, disabled: true}',
      ),
    )
    expect(boxfile.machines[0]!.syncedFolders).toEqual([
      {source: join(dir, 'src'), destination: '/srv/src', exclude: ['.git/'], disabled: false},
      {source: join(dir, 'gone'), destination: '/srv/gone', exclude: [], disabled: true},
    ])
    expect(
      await problems(
        yaml(
          'box: b',
          'synced_folders:',
          '  - {source: gone, destination: /srv/gone}',
          '  - {source: src, destination: srv}',
          '  - {source: src, destination: /srv/gone}',
        ),
      ),
    ).toEqual([`Boxfile:4:32: synced_folders.1.destination: must be an absolute guest path such as /srv/project`])
    expect(
      await problems(
        yaml(
          'box: b',
          'synced_folders:',
          '  - {source: gone, destination: /srv/gone}',
          '  - {source: src, destination: /srv/gone}',
        ),
      ),
    ).toEqual([
      `Boxfile:3:14: synced_folders.0.source: no such directory: ${join(dir, 'gone')}`,
      `Boxfile:4:5: synced_folders.1: destination is already synced from ${file}:3:5`,
    ])
  })
})

describe('provisioners', () => {
  it('needs exactly one of inline and path', async () => {
    await writeFile(join(dir, 'setup.sh'), 'true\n')
    expect(
      await problems(yaml('box: b', 'provisioners:', '  - type: shell', '    inline: "true"', '    path: setup.sh')),
    ).toEqual([
      'Boxfile:5:11: provisioners.0.path: set either inline (a script in the Boxfile) or path (a script file), not both',
    ])
    expect(await problems(yaml('box: b', 'provisioners:', '  - type: shell', '    args: [x]'))).toEqual([
      'Boxfile:3:5: provisioners.0: a shell provisioner needs inline (a script in the Boxfile) or path (a script file)',
    ])
  })

  it('requires path scripts and file sources to exist, relative to the Boxfile', async () => {
    await mkdir(join(dir, 'sub'))
    await writeFile(join(dir, 'sub', 'Boxfile'), '')
    expect(
      await problems(
        yaml(
          'box: b',
          'machines:',
          '  web:',
          '    provisioners:',
          '      - {type: shell, path: scripts/setup.sh}',
          '      - {type: shell, path: .}',
          '      - {type: file, source: missing.conf, destination: /etc/x.conf}',
        ),
      ),
    ).toEqual([
      `Boxfile:5:29: machines.web.provisioners.0.path: no such file: ${join(dir, 'scripts', 'setup.sh')}`,
      `Boxfile:6:29: machines.web.provisioners.1.path: no such file: ${dir}`,
      `Boxfile:7:30: machines.web.provisioners.2.source: no such file or directory: ${join(dir, 'missing.conf')}`,
    ])
  })

  it('rejects two provisioners of one machine with the same name, counting inherited ones', async () => {
    expect(
      await problems(
        yaml(
          'box: b',
          'provisioners:',
          '  - {type: shell, inline: "true", name: setup}',
          'machines:',
          '  web:',
          '    provisioners:',
          '      - {type: shell, inline: "false", name: setup}',
        ),
      ),
    ).toEqual([
      `Boxfile:7:9: machines.web.provisioners.0: another provisioner of machine web has this name (${file}:3:5)`,
    ])
  })

  it('reports every problem of a Boxfile at once', async () => {
    expect(
      await problems(
        yaml(
          'box: b',
          'provisioners:',
          '  - {type: shell}',
          '  - {type: shell, path: nope.sh}',
          'forwarded_ports:',
          '  - {guest: 1, host: 9000}',
          '  - {guest: 2, host: 9000}',
        ),
      ),
    ).toHaveLength(3)
  })
})

describe('finding the Boxfile', () => {
  it('walks up from a subdirectory like Vagrant', async () => {
    await writeFile(file, yaml('box: b'))
    const deep = join(dir, 'a', 'b')
    await mkdir(deep, {recursive: true})
    expect(await findBoxfile(deep, {})).toBe(file)
    const boxfile = await loadBoxfile({cwd: deep})
    expect(boxfile.file).toBe(file)
    expect(boxfile.machines[0]!.name).toBe('default')
  })

  it('ignores a directory named Boxfile', async () => {
    await mkdir(join(dir, 'x', 'Boxfile'), {recursive: true})
    await writeFile(file, yaml('box: b'))
    expect(await findBoxfile(join(dir, 'x'), {})).toBe(file)
  })

  it('says where it looked and how to create one when there is none', async () => {
    const empty = join(dir, 'empty')
    await mkdir(empty)
    // tmpdir() must not hold a Boxfile for this test to mean anything.
    await expect(findBoxfile(empty, {})).rejects.toThrow(
      `no Boxfile found in ${empty} or its parents; create one with: box init BOX`,
    )
    await expect(loadBoxfile({cwd: empty, file: 'Boxfile'})).rejects.toThrow(
      `Boxfile not found: ${join(empty, 'Boxfile')}`,
    )
  })

  it('BOX_BOXFILE as a name is searched for upwards; as a path it is used as is', async () => {
    await writeFile(join(dir, 'Boxfile.workers'), yaml('box: w'))
    await mkdir(join(dir, 'sub'))
    expect(await findBoxfile(join(dir, 'sub'), {BOX_BOXFILE: 'Boxfile.workers'})).toBe(join(dir, 'Boxfile.workers'))
    expect(await findBoxfile(dir, {BOX_BOXFILE: './Boxfile.workers'})).toBe(join(dir, 'Boxfile.workers'))
    await expect(findBoxfile(dir, {BOX_BOXFILE: './nope'})).rejects.toThrow(
      `BOX_BOXFILE=./nope: no such file ${join(dir, 'nope')}`,
    )
    await expect(findBoxfile(join(dir, 'sub'), {BOX_BOXFILE: 'Boxfile.nope'})).rejects.toThrow(
      'no Boxfile.nope found in',
    )
  })

  it('loadBoxfile reports problems with the real file path', async () => {
    await writeFile(file, yaml('box: b', 'cpus: many'))
    await expect(loadBoxfile({cwd: dir})).rejects.toThrow(
      `${file}:2:7: cpus: must be a whole number of CPUs, at least 1`,
    )
  })
})

describe('the init template', () => {
  it('renders a Boxfile that validates, with the worker defaults written out', async () => {
    const text = await renderBoxfile({box: 'org/worker', boxUrl: 'https://example.org/w.json#frag'}, file)
    expect(text).toContain('box: org/worker\n')
    expect(text).toContain('box_url: "https://example.org/w.json#frag"\n')
    expect(text).toMatch(/^provider: qemu$/m)
    expect(text).toMatch(/^resnap: always$/m)
    const [machine] = (await parse(text)).machines
    expect(machine).toMatchObject({
      name: 'default',
      box: 'org/worker',
      boxUrl: 'https://example.org/w.json#frag',
      cpus: 2,
      memoryMiB: 1024,
      resnap: 'always',
    })
  })

  it('every commented example in the template validates once uncommented', async () => {
    await mkdir(join(dir, 'src'))
    await writeFile(join(dir, 'setup.sh'), 'true\n')
    await writeFile(join(dir, 'worker.conf'), '')
    await writeFile(join(dir, 'team_box.key'), '', {mode: 0o600})
    const text = await renderBoxfile({box: 'b'}, file)
    // Uncomment the example fields and their indented lines; prose comments are never indented.
    const uncomment = (part: string) =>
      part
        .replace(
          /^# ((?:box_version|forwarded_ports|synced_folders|provisioners|ssh|hostname|site|director_port|machines):.*|  .*)$/gm,
          '$1',
        )
        .replace(/\s+# or inline:.*$/m, '')
    const machinesAt = text.indexOf('# machines:')
    expect(machinesAt).toBeGreaterThan(0)

    const single = await parse(uncomment(text.slice(0, machinesAt)))
    expect(single.machines).toHaveLength(1)
    expect(single.machines[0]).toMatchObject({
      boxVersion: '>= 1.0, < 2',
      hostname: 'worker-1',
      site: 'example.org',
      directorPort: 8443,
      ssh: {username: 'vagrant', privateKeyPath: join(dir, 'team_box.key'), forwardAgent: false},
    })
    expect(single.machines[0]!.forwardedPorts).toHaveLength(2)
    expect(single.machines[0]!.syncedFolders).toHaveLength(1)
    expect(single.machines[0]!.provisioners.map((p) => p.type)).toEqual(['shell', 'file'])

    const several = await parse(`box: b\n${uncomment(text.slice(machinesAt))}`)
    expect(several.machines.map((m) => [m.name, m.memoryMiB, m.cpus])).toEqual([
      ['worker', 2048, 2],
      ['director', 1024, 1],
    ])
  })

  it('--minimal is just the box lines', async () => {
    expect(await renderBoxfile({box: 'b', minimal: true}, file)).toBe('box: b\n')
    expect(await renderBoxfile({box: 'b', boxUrl: 'b.box', minimal: true}, file)).toBe('box: b\nbox_url: "b.box"\n')
  })

  it('refuses a box name the Boxfile would reject', async () => {
    await expect(renderBoxfile({box: 'no spaces'}, file)).rejects.toThrow('invalid box name "no spaces"')
  })
})

describe('ansible provisioners and forward_ports', () => {
  it('resolves an ansible provisioner: the playbook beside the Boxfile, defaults for the rest', async () => {
    await writeFile(join(dir, 'site.yml'), '- hosts: all\n  tasks: []\n')
    const boxfile = await parse(
      yaml(
        'box: b',
        'forward_ports: auto',
        'provisioners:',
        '  - {type: ansible, playbook: site.yml}',
        '  - type: ansible',
        '    name: web setup',
        '    playbook: ./site.yml',
        '    extra_vars: {app_port: 8080, users: [ann, bob]}',
        '    inventory_groups: {webservers: [default, other]}',
        '    limit: webservers',
        '    become: true',
        '    run: always',
      ),
    )
    const [machine] = boxfile.machines
    expect(machine!.forwardPorts).toBe('auto')
    expect(machine!.provisioners).toEqual([
      {
        type: 'ansible',
        name: 'site.yml',
        playbook: join(dir, 'site.yml'),
        extraVars: {},
        inventoryGroups: {},
        limit: undefined,
        become: false,
        run: 'once',
      },
      {
        type: 'ansible',
        name: 'web setup',
        playbook: join(dir, 'site.yml'),
        extraVars: {app_port: 8080, users: ['ann', 'bob']},
        inventoryGroups: {webservers: ['default', 'other']},
        limit: 'webservers',
        become: true,
        run: 'always',
      },
    ])
  })

  it('rejects a missing playbook and bad ansible fields at their lines', async () => {
    expect(
      await problems(
        yaml(
          'box: b',
          'provisioners:',
          '  - {type: ansible, playbook: nope.yml}',
          '  - {type: ansible}',
          '  - {type: ansible, playbook: nope.yml, extra_vars: [a, b], become: yes please}',
          '  - {type: ansible, playbook: nope.yml, inventory_groups: {1bad: [web]}, limit: ""}',
          '  - {type: ansible, playbook: nope.yml, inventory_groups: {web: "-x"}, forks: 3}',
          'machines:',
          '  web:',
          '    forward_ports: yes',
        ),
      ),
    ).toEqual([
      'Boxfile:4:5: provisioners.1.playbook: required: a playbook file (relative to the Boxfile)',
      'Boxfile:5:53: provisioners.2.extra_vars: must be a map of variable names to values, e.g. {app_port: 8080}',
      'Boxfile:5:69: provisioners.2.become: must be true or false',
      'Boxfile:6:66: provisioners.3.inventory_groups.1bad: group names use letters, digits and "_" and do not start with a digit (as Ansible wants)',
      'Boxfile:6:81: provisioners.3.limit: must not be empty: an Ansible host pattern such as web or "webservers:!db"',
      'Boxfile:7:65: provisioners.4.inventory_groups.web: must be a list of machine names, e.g. [web, db]',
      'Boxfile:7:79: provisioners.4.forks: unknown field (accepted: type, name, playbook, extra_vars, inventory_groups, limit, become, run)',
      'Boxfile:10:20: machines.web.forward_ports: must be one of: auto, off',
    ])
    expect(await problems(yaml('box: b', 'provisioners:', '  - {type: ansible, playbook: nope.yml}'))).toEqual([
      `Boxfile:3:31: provisioners.0.playbook: no such file: ${join(dir, 'nope.yml')}`,
    ])
  })
})
