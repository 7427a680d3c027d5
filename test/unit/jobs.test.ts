import {lstat, mkdir, readFile, readdir, symlink, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {parseJobFile} from '../../src/lib/jobs/jobfile.js'
import {capFile, CappedOutput, cutMarker, extractOutputs} from '../../src/lib/jobs/outputs.js'
import {parseStatus} from '../../src/lib/jobs/phases.js'
import {checkOutputs, parseDuration, parseInput, parseSize} from '../../src/lib/jobs/spec.js'
import {listTree, makeTempDir, writeRawTar} from '../fixtures/boxes.js'

let dir: string
let cleanup: () => Promise<void>
beforeEach(async () => {
  ;({dir, cleanup} = await makeTempDir('box-jobs-unit-'))
})
afterEach(async () => cleanup())

describe('job file', () => {
  const file = () => join(dir, 'jobs.yaml')

  it('reads the shape of issue 15: defaults, list and string commands, paths relative to the file', () => {
    const text = `box: grader
defaults: {timeout: 60s, output_limit: 1M, network: off}
retries: 2
jobs:
  - id: alice
    command: [make, -C, /tmp/job, grade]
    in: [submissions/alice:/tmp/job]
    out: [/tmp/job/feedback.txt]
  - id: bob
    command: "make -C /tmp/job grade"
    in: [submissions/bob:/tmp/job]
    out: [/tmp/job/feedback.txt]
    timeout: 120s
`
    const jobs = parseJobFile(file(), text)
    expect(jobs.box).toBe('grader')
    expect(jobs.retries).toBe(2)
    expect(jobs.jobs.map((job) => [job.id, job.timeoutMs, job.outputLimit, job.network])).toEqual([
      ['alice', 60_000, 1024 * 1024, false],
      ['bob', 120_000, 1024 * 1024, false],
    ])
    expect(jobs.jobs[0]!.command).toEqual(['make', '-C', '/tmp/job', 'grade'])
    expect(jobs.jobs[1]!.command).toBe('make -C /tmp/job grade')
    expect(parseJobFile(file(), 'box: g\njobs:\n  - id: a\n    command: [sleep, 1, true]\n').jobs[0]!.command).toEqual([
      'sleep',
      '1',
      'true',
    ])
    expect(jobs.jobs[0]!.inputs).toEqual([{host: join(dir, 'submissions', 'alice'), guest: '/tmp/job'}])
    expect(jobs.jobs[0]!.outputs).toEqual(['/tmp/job/feedback.txt'])
  })

  it('names an unknown field with file:line:col and the accepted fields', () => {
    const text = `box: grader
jobs:
  - id: alice
    command: [true]
    timout: 5s
`
    expect(() => parseJobFile(file(), text)).toThrow(
      new RegExp(
        `${file().replace(/[.]/g, '\\.')}:5:5: unknown field "jobs\\.0\\.timout" \\(accepted: id, command, in, out, timeout`,
      ),
    )
  })

  it('reports bad values where they are', () => {
    expect(() => parseJobFile(file(), 'box: g\njobs:\n  - id: a\n    command: x\n    timeout: soon\n')).toThrow(
      /jobs\.yaml:5:14: jobs\.0\.timeout: timeout: "soon" is not a duration/,
    )
    expect(() =>
      parseJobFile(file(), 'box: g\njobs:\n  - id: a\n    command: x\n    in: [../../etc:/tmp/x]\n'),
    ).toThrow(/jobs\.yaml:5:10: jobs\.0\.in\.0: .*leaves .* \(it climbs out with "\.\."\)/)
    expect(() => parseJobFile(file(), 'box: g\njobs:\n  - id: a\n    command: x\n  - id: a\n    command: y\n')).toThrow(
      /jobs\.yaml:5:9: jobs\.1\.id: the id a is used twice/,
    )
    expect(() => parseJobFile(file(), 'box: g\njobs:\n  - id: ../x\n    command: x\n')).toThrow(
      /jobs\.yaml:3:9: jobs\.0\.id: must be a plain name/,
    )
    expect(() => parseJobFile(file(), 'jobs:\n  - id: a\n    command: x\n')).toThrow(/name the box/)
    expect(() =>
      parseJobFile(file(), 'box: g\nsetup: [apt-get install -y make]\njobs:\n  - id: a\n    command: x\n'),
    ).toThrow(/jobs\.yaml:2:8: setup: .*network: on/)
  })
})

describe('job spec checks', () => {
  it('parses durations and sizes, refuses nonsense', () => {
    expect(parseDuration('90s')).toBe(90_000)
    expect(parseDuration('2m')).toBe(120_000)
    expect(parseDuration(5)).toBe(5000)
    expect(parseDuration('500ms')).toBe(500)
    expect(() => parseDuration('0s')).toThrow(/more than zero/)
    expect(parseSize('1M')).toBe(1024 * 1024)
    expect(parseSize('1000K')).toBe(1_024_000)
    expect(parseSize(42)).toBe(42)
    expect(() => parseSize('lots')).toThrow(/not a size/)
  })

  it('keeps inputs inside their base folder and guest paths plain', () => {
    expect(parseInput('sub/a:/tmp/job', '/base')).toEqual({host: '/base/sub/a', guest: '/tmp/job'})
    expect(parseInput('data.csv', '/base')).toEqual({host: '/base/data.csv', guest: '/tmp/job/data.csv'})
    expect(() => parseInput('../secret', '/base')).toThrow(/climbs out/)
    expect(() => parseInput('a/../../secret:/tmp/x', '/base')).toThrow(/climbs out/)
    expect(() => parseInput('a:/tmp/../etc', '/base')).toThrow(/contains "\.\."/)
    expect(() => parseInput('a:/', '/base')).toThrow(/root directory/)
    expect(() => checkOutputs(['/a/stdout'])).toThrow(/taken by the job's own result files/)
    expect(() => checkOutputs(['/a/x', '/b/x'])).toThrow(/would both be results/)
    expect(() => checkOutputs(['relative'])).toThrow(/not absolute/)
  })

  it("reads box-job's status file", () => {
    expect(parseStatus('exit 137\nsignal KILL\ntimed_out 1\ncut 0\nstdout_bytes 0\nrun_ms 3029\n')).toEqual({
      exit: 137,
      signal: 'SIGKILL',
      timedOut: true,
      cut: false,
      runMs: 3029,
    })
    expect(() => parseStatus('garbage')).toThrow(/no exit code/)
  })
})

describe('output cap', () => {
  it('keeps the first LIMIT bytes of a stream and ends a cut one with the marker', async () => {
    const path = join(dir, 'stdout')
    const output = await CappedOutput.create(path, 1000)
    for (let i = 0; i < 100; i++) await output.write(Buffer.alloc(100, 'x'))
    await output.finish()
    const text = await readFile(path, 'utf8')
    expect(output.cut).toBe(true)
    expect(output.bytes).toBe(1000)
    expect(text).toBe(`${'x'.repeat(1000)}${cutMarker(1000)}`)
  })

  it('leaves output under the limit as it is', async () => {
    const source = join(dir, 'kept')
    await writeFile(source, 'hello\n')
    expect(await capFile(source, join(dir, 'out'), 1000, false)).toEqual({bytes: 6, cut: false})
    expect(await readFile(join(dir, 'out'), 'utf8')).toBe('hello\n')
  })

  it('cuts what box-job kept (LIMIT + 1 bytes) and never writes through a file that exists', async () => {
    const source = join(dir, 'kept')
    await writeFile(source, 'y'.repeat(11))
    expect(await capFile(source, join(dir, 'cut'), 10, false)).toEqual({bytes: 10, cut: true})
    expect(await readFile(join(dir, 'cut'), 'utf8')).toBe(`${'y'.repeat(10)}${cutMarker(10)}`)
    await symlink('/etc/passwd', join(dir, 'link'))
    await expect(capFile(source, join(dir, 'link'), 10, false)).rejects.toThrow(/EEXIST/)
  })
})

describe('output extraction', () => {
  it('writes files and folders under their out: name and refuses links, devices, ".." and strays', async () => {
    const tarFile = await writeRawTar(join(dir, 'out.tar'), [
      {header: {name: 'tmp/job/feedback.txt', type: 'file', mode: 0o4755}, content: 'grade: A\n'},
      {header: {name: 'tmp/job/out', type: 'directory'}},
      {header: {name: 'tmp/job/out/a.txt', type: 'file'}, content: 'a'},
      {header: {name: 'tmp/job/out/ssh', type: 'symlink', linkname: '/root/.ssh'}},
      {header: {name: 'tmp/job/out/ssh/authorized_keys', type: 'file'}, content: 'ssh-ed25519 AAAA evil\n'},
      {header: {name: 'tmp/job/out/up', type: 'symlink', linkname: '../../..'}},
      {header: {name: 'tmp/job/out/hard', type: 'link', linkname: 'etc/passwd'}},
      {header: {name: 'tmp/job/out/../../../../escape.txt', type: 'file'}, content: 'escaped'},
      {header: {name: '/etc/cron.d/evil', type: 'file'}, content: 'evil'},
      {header: {name: 'tmp/job/out/null', type: 'character-device', devmajor: 1, devminor: 3}},
      {header: {name: 'tmp/job/out/fifo', type: 'fifo'}},
      {header: {name: 'etc/shadow', type: 'file'}, content: 'not asked for'},
    ])
    const results = join(dir, 'results', 'job1')
    await mkdir(results, {recursive: true})
    const extracted = await extractOutputs(tarFile, results, ['/tmp/job/feedback.txt', '/tmp/job/out'], 1024 * 1024)
    expect(await listTree(join(dir, 'results'))).toEqual(['job1', 'job1/feedback.txt', 'job1/out', 'job1/out/a.txt'])
    expect(await readFile(join(results, 'feedback.txt'), 'utf8')).toBe('grade: A\n')
    // No setuid bit survives.
    expect((await lstat(join(results, 'feedback.txt'))).mode & 0o7777).toBe(0o755)
    expect(extracted.files).toBe(2)
    const refused = Object.fromEntries(extracted.refused.map((entry) => [entry.name, entry.reason]))
    expect(Object.keys(refused).sort()).toEqual(
      [
        '/etc/cron.d/evil',
        'etc/shadow',
        'tmp/job/out/../../../../escape.txt',
        'tmp/job/out/fifo',
        'tmp/job/out/hard',
        'tmp/job/out/null',
        'tmp/job/out/ssh',
        'tmp/job/out/ssh/authorized_keys',
        'tmp/job/out/up',
      ].sort(),
    )
    expect(refused['tmp/job/out/ssh']).toMatch(/symlink entries are not written/)
    expect(refused['tmp/job/out/../../../../escape.txt']).toMatch(/"\.\."/)
    expect(await readdir(dir)).not.toContain('escape.txt')
  })

  it('stops at the outputs limit', async () => {
    const tarFile = await writeRawTar(join(dir, 'out.tar'), [
      {header: {name: 'o/a', type: 'file'}, content: 'x'.repeat(600)},
      {header: {name: 'o/b', type: 'file'}, content: 'x'.repeat(600)},
    ])
    const extracted = await extractOutputs(tarFile, dir, ['/o'], 1000)
    expect(extracted.files).toBe(1)
    expect(extracted.refused).toEqual([{name: 'o/b', reason: expect.stringMatching(/over the outputs limit/)}])
  })
})
