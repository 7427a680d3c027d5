/**
 * Benchmark of `box build` (not a test): build time by stage, box size, and with
 * --boot the time from QEMU start to sshd accepting a login under TCG — direct kernel
 * boot and grub — plus the resnap line from the console.
 *
 *   node --import tsx/esm bench/build.ts                 # from scratch in a temp cache (debootstrap included)
 *   node --import tsx/esm bench/build.ts --cache DIR     # reuse DIR's rootfs cache (configure → package only)
 *   node --import tsx/esm bench/build.ts --box FILE --boot   # only the boot figures, for an existing .box
 */
import {mkdtemp, rm, stat} from 'node:fs/promises'
import {createServer} from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {parseArgs} from 'node:util'

import {execa} from 'execa'

import {buildBox} from '../src/builder/index.js'
import {BoxMetadataSchema} from '../src/lib/box/metadata.js'
import {PROJECT_ROOT} from '../src/lib/core/paths.js'
import {createProgress, formatBytes, formatDuration} from '../src/lib/core/progress.js'
import {bootCommandLine} from '../src/lib/box/resnap.js'

const {values} = parseArgs({
  options: {
    cache: {type: 'string'},
    box: {type: 'string'},
    boot: {type: 'boolean', default: false},
    recipe: {type: 'string', default: join(PROJECT_ROOT, 'boxes', 'debian-bookworm')},
  },
})

const KEY = join(PROJECT_ROOT, 'static', 'insecure_key')
const scratch = await mkdtemp(join(tmpdir(), 'box-bench-'))

try {
  let boxFile = values.box
  if (!boxFile) {
    const cacheDir = values.cache ?? join(scratch, 'cache')
    boxFile = join(scratch, 'bench.box')
    const result = await buildBox({
      recipeDir: values.recipe,
      output: boxFile,
      cacheDir,
      force: true,
      progress: createProgress({plain: true}),
    })
    console.log('\nbuild time by stage')
    for (const timing of result.timings)
      console.log(
        `  ${timing.stage.padEnd(20)} ${formatDuration(timing.ms).padStart(10)}${timing.cached ? '  (cached)' : ''}`,
      )
    console.log(
      `  ${'total'.padEnd(20)} ${formatDuration(result.timings.reduce((sum, t) => sum + t.ms, 0)).padStart(10)}`,
    )
    console.log(`box: ${formatBytes(result.size)} (${result.size} bytes), sha256 ${result.sha256}`)
  } else {
    console.log(`box: ${formatBytes((await stat(boxFile)).size)}`)
  }
  if (values.boot) await bootFigures(boxFile)
} finally {
  await rm(scratch, {recursive: true, force: true})
}

async function bootFigures(boxFile: string): Promise<void> {
  const dir = join(scratch, 'boot')
  await execa('mkdir', ['-p', dir])
  await execa('tar', ['--zstd', '-xf', boxFile, '-C', dir])
  const metadata = BoxMetadataSchema.parse(
    JSON.parse(String((await execa('cat', [join(dir, 'metadata.json')])).stdout)),
  )
  const append = bootCommandLine(metadata.box!, {resnap: true})!
  console.log(
    `\nboot to ssh under TCG (load average now: ${(await execa('cat', ['/proc/loadavg'])).stdout.split(' ').slice(0, 3).join(' ')})`,
  )
  for (const mode of ['direct kernel', 'grub'] as const) {
    const overlay = join(dir, `overlay-${mode === 'grub' ? 'grub' : 'direct'}.qcow2`)
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', join(dir, 'box.img'), '-F', 'qcow2', overlay])
    const port = await freePort()
    const serial = join(dir, `serial-${port}.log`)
    const args = [
      '-accel',
      'tcg',
      '-m',
      '1024',
      '-smp',
      '2',
      '-nodefaults',
      '-no-user-config',
      '-display',
      'none',
      '-serial',
      `file:${serial}`,
      '-drive',
      `file=${overlay},if=virtio,format=qcow2`,
      '-nic',
      `user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:${port}-:22`,
    ]
    if (mode === 'direct kernel')
      args.push('-kernel', join(dir, 'vmlinuz'), '-initrd', join(dir, 'initrd.img'), '-append', append)
    const started = Date.now()
    const qemu = execa('qemu-system-x86_64', args, {reject: false, stdin: 'ignore'})
    let seconds: number | undefined
    try {
      while (Date.now() - started < 300_000 && qemu.exitCode === null) {
        const ssh = await execa(
          'ssh',
          [
            '-q',
            '-o',
            'BatchMode=yes',
            '-o',
            'StrictHostKeyChecking=no',
            '-o',
            'UserKnownHostsFile=/dev/null',
            '-o',
            'ConnectTimeout=2',
            '-i',
            KEY,
            '-p',
            String(port),
            `${metadata.box!.user}@127.0.0.1`,
            'true',
          ],
          {reject: false, timeout: 10_000},
        )
        if (ssh.exitCode === 0) {
          seconds = (Date.now() - started) / 1000
          break
        }
        await new Promise((resolve) => setTimeout(resolve, 250))
      }
    } finally {
      qemu.kill()
      await qemu
    }
    const resnapLine = (await execa('grep', ['-a', '-m1', 'resnap:', serial], {reject: false})).stdout.trim()
    console.log(
      `  ${mode.padEnd(14)} ${seconds === undefined ? 'no ssh within 300 s' : `${seconds.toFixed(1)} s`}   ${resnapLine}`,
    )
  }
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.listen(0, '127.0.0.1', () => {
      const {port} = server.address() as {port: number}
      server.close(() => resolve(port))
    })
    server.on('error', reject)
  })
}
