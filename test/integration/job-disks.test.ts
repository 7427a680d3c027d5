/**
 * The disks of a job without network, with the real mke2fs and debugfs (no QEMU): the
 * staged job folder round-trips through the input image, and reading an output image
 * takes only box-job's fixed result files, only when they are regular files.
 */
import {mkdir, readFile, readdir, symlink, writeFile} from 'node:fs/promises'
import {join} from 'node:path'
import {execa} from 'execa'
import {afterEach, beforeEach, describe, expect, it} from 'vitest'

import {makeInputImage, readOutputImage, stageJob} from '../../src/lib/jobs/images.js'
import {makeTempDir} from '../fixtures/boxes.js'
import {jobSpec} from '../support/job-box.js'

let dir: string
let cleanup: () => Promise<void>
beforeEach(async () => {
  ;({dir, cleanup} = await makeTempDir('box-job-disks-'))
})
afterEach(async () => cleanup())

describe('job disks', () => {
  it('stages limits, command, inputs and a copy of each input into an ext4 image made without mounting', async () => {
    const input = join(dir, 'submission')
    await mkdir(join(input, 'src'), {recursive: true})
    await writeFile(join(input, 'src', 'main.c'), 'int main(void) { return 0; }\n')
    await symlink('src/main.c', join(input, 'link'))
    const spec = jobSpec({
      id: 'a',
      command: ['make', 'it so'],
      inputs: [{host: input, guest: '/tmp/job'}],
      outputs: ['/tmp/job/out'],
      timeoutMs: 1500,
      user: 'grader',
    })
    const jobDir = join(dir, 'job')
    const bytes = await stageJob(spec, jobDir)
    expect(bytes).toBe(29)
    expect(await readFile(join(jobDir, 'limits'), 'utf8')).toBe(
      `user grader\ntimeout 2\noutput_limit ${1000 * 1024}\nnproc 100\nfsize ${100 * 1024 * 1024}\n`,
    )
    expect(await readFile(join(jobDir, 'command'), 'utf8')).toBe("make 'it so'\n")
    expect(await readFile(join(jobDir, 'inputs'), 'utf8')).toBe('0 /tmp/job\n')
    expect(await readFile(join(jobDir, 'outputs'), 'utf8')).toBe('/tmp/job/out\n')
    const image = join(dir, 'in.img')
    await makeInputImage(jobDir, image, bytes)
    const {stdout} = await execa('debugfs', ['-R', 'ls -p /in/0', image])
    expect(stdout).toMatch(/\/120777\/\d+\/\d+\/link\//)
    expect(stdout).toMatch(/\/040755\/\d+\/\d+\/src\//)
  })

  it('refuses a device or fifo among the inputs', async () => {
    const input = join(dir, 'submission')
    await mkdir(input)
    await execa('mkfifo', [join(input, 'pipe')])
    await expect(
      stageJob(jobSpec({id: 'a', command: 'true', inputs: [{host: input, guest: '/tmp/job'}]}), join(dir, 'job')),
    ).rejects.toThrow(/not a file, folder or symlink/)
  })

  it('reads only the fixed result files of an output image, and only regular ones', async () => {
    const guest = join(dir, 'guest-out')
    await mkdir(guest)
    await writeFile(join(guest, 'status'), 'exit 0\n')
    await writeFile(join(guest, 'stdout'), 'hi\n')
    // A hostile guest: stderr is a link to a host path, out.tar a folder, and a stray file.
    await symlink('/etc/shadow', join(guest, 'stderr'))
    await mkdir(join(guest, 'out.tar'))
    await writeFile(join(guest, 'evil.sh'), 'rm -rf /\n')
    const image = join(dir, 'out.img')
    await execa('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', guest, image, '8M'])
    const dest = join(dir, 'from-guest')
    const found = await readOutputImage(image, dest)
    expect(found.sort()).toEqual(['status', 'stdout'])
    expect((await readdir(dest)).sort()).toEqual(['status', 'stdout'])
    expect(await readFile(join(dest, 'stdout'), 'utf8')).toBe('hi\n')
  })
})
