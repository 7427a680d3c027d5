/**
 * Download throughput: box's download() against curl, from the same loopback server in
 * one run, and the CPU that checksumming adds.
 *
 *   node --import tsx/esm bench/download.ts [--size-mb 1024] [--rounds 3] [--out-dir /dev/shm]
 *
 * The server is a separate node process (so it does not share download()'s event loop)
 * serving a file of random bytes (nothing compresses) with Range support. Each round
 * runs curl, download() without a checksum and download() with sha256; the best of the
 * rounds is reported, as is usual for throughput on a shared machine.
 */
import {spawn} from 'node:child_process'
import {randomBytes} from 'node:crypto'
import {createReadStream} from 'node:fs'
import {mkdtemp, open, rm, stat} from 'node:fs/promises'
import {createServer} from 'node:http'
import type {AddressInfo} from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {parseArgs} from 'node:util'

import {download, type Checksum} from '../src/lib/store/download.js'

const {values} = parseArgs({
  options: {
    'size-mb': {type: 'string', default: '1024'},
    rounds: {type: 'string', default: '3'},
    /** Where the downloads are written (default: the temp dir; /dev/shm takes the disk out of the figures). */
    'out-dir': {type: 'string'},
    serve: {type: 'string'},
  },
})

if (values.serve) {
  await serve(values.serve)
} else {
  await main(Number(values['size-mb']), Number(values.rounds), values['out-dir'])
}

/** The server process: GET (with Range) of one file; prints its port on stdout. */
async function serve(file: string): Promise<void> {
  const {size} = await stat(file)
  const server = createServer((request, response) => {
    const range = /^bytes=(\d+)-$/.exec(request.headers.range ?? '')
    const start = range ? Number(range[1]) : 0
    const headers = {
      'content-length': size - start,
      etag: '"bench"',
      'accept-ranges': 'bytes',
      'content-type': 'application/octet-stream',
    }
    if (range) response.writeHead(206, {...headers, 'content-range': `bytes ${start}-${size - 1}/${size}`})
    else response.writeHead(200, headers)
    createReadStream(file, {start, highWaterMark: 1 << 20}).pipe(response)
  })
  server.listen(0, '127.0.0.1', () => process.stdout.write(`${(server.address() as AddressInfo).port}\n`))
}

async function main(sizeMb: number, rounds: number, outDir: string | undefined): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'box-bench-download-'))
  const outputDir = outDir ? await mkdtemp(join(outDir, 'box-bench-download-')) : dir
  const file = join(dir, 'served.box')
  const bytes = sizeMb * 1024 * 1024
  let server: ReturnType<typeof spawn> | undefined
  try {
    process.stdout.write(`generating ${sizeMb} MiB of random data… `)
    const digest = await writeRandomFile(file, bytes)
    process.stdout.write('done\n')

    server = spawn(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), '--serve', file], {
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    const port = await new Promise<number>((resolve, reject) => {
      server!.stdout!.once('data', (chunk: Buffer) => resolve(Number(chunk.toString().trim())))
      server!.once('exit', (code) => reject(new Error(`server exited with ${code}`)))
    })
    const url = `http://127.0.0.1:${port}/served.box`
    const output = join(outputDir, 'out.box')

    // One unmeasured pass warms the page cache for the served file.
    await runCurl(url, output)
    await rm(output, {force: true})

    const results = {curl: [] as Run[], plain: [] as Run[], sha256: [] as Run[]}
    for (let round = 0; round < rounds; round++) {
      results.curl.push(await timed(() => runCurl(url, output), bytes))
      await rm(output, {force: true})
      results.plain.push(await timed(() => download({url, dest: output}), bytes))
      await rm(output, {force: true})
      results.sha256.push(
        await timed(
          () => download({url, dest: output, checksum: {type: 'sha256', value: digest} satisfies Checksum}),
          bytes,
        ),
      )
      await rm(output, {force: true})
    }

    const best = (runs: Run[]) => runs.reduce((a, b) => (b.mbPerSecond > a.mbPerSecond ? b : a))
    const curl = best(results.curl)
    const plain = best(results.plain)
    const hashed = best(results.sha256)
    const line = (label: string, run: Run, cpu = true) =>
      `${label.padEnd(26)} ${run.mbPerSecond.toFixed(0).padStart(6)} MB/s  ${run.seconds.toFixed(2)} s${cpu ? `  CPU ${run.cpuSeconds.toFixed(2)} s` : ''}`
    console.log(`\n${sizeMb} MiB over http://127.0.0.1 into ${outputDir}, best of ${rounds} rounds (MB = 10^6 bytes)`)
    console.log(line('curl -o', curl, false))
    console.log(line('download()', plain))
    console.log(line('download() + sha256', hashed))
    console.log(`ratio download()/curl:          ${(plain.mbPerSecond / curl.mbPerSecond).toFixed(2)}× (target ≥ 0.9×)`)
    console.log(`ratio download()+sha256/curl:   ${(hashed.mbPerSecond / curl.mbPerSecond).toFixed(2)}×`)
    const cpuPerGb = (run: Run) => (run.cpuSeconds / bytes) * 1024 ** 3
    console.log(
      `CPU added by sha256:            ${(hashed.cpuSeconds - plain.cpuSeconds).toFixed(2)} s for ${sizeMb} MiB (${(cpuPerGb(hashed) - cpuPerGb(plain)).toFixed(2)} s/GiB; download() alone ${cpuPerGb(plain).toFixed(2)} s/GiB)`,
    )
    console.log(
      `all rounds (MB/s): curl ${results.curl.map((r) => r.mbPerSecond.toFixed(0)).join(' ')} | download() ${results.plain.map((r) => r.mbPerSecond.toFixed(0)).join(' ')} | +sha256 ${results.sha256.map((r) => r.mbPerSecond.toFixed(0)).join(' ')}`,
    )
  } finally {
    server?.kill()
    await rm(dir, {recursive: true, force: true})
    await rm(outputDir, {recursive: true, force: true})
  }
}

interface Run {
  seconds: number
  mbPerSecond: number
  /** CPU time of this process (user + system) during the run; curl's own CPU is not counted. */
  cpuSeconds: number
}

async function timed(work: () => Promise<unknown>, bytes: number): Promise<Run> {
  const cpu = process.cpuUsage()
  const started = performance.now()
  await work()
  const seconds = (performance.now() - started) / 1000
  const used = process.cpuUsage(cpu)
  return {seconds, mbPerSecond: bytes / 1e6 / seconds, cpuSeconds: (used.user + used.system) / 1e6}
}

function runCurl(url: string, output: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('curl', ['-sS', '-f', '-o', output, url], {stdio: ['ignore', 'ignore', 'inherit']})
    child.once('error', (error) => reject(new Error(`curl: ${error.message} (install it: apt-get install curl)`)))
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`curl exited with ${code}`))))
  })
}

/** Random bytes (incompressible) in 16 MiB blocks; returns the sha256 computed on the way. */
async function writeRandomFile(file: string, bytes: number): Promise<string> {
  const {createHash} = await import('node:crypto')
  const hash = createHash('sha256')
  const handle = await open(file, 'w')
  try {
    for (let written = 0; written < bytes;) {
      const block = randomBytes(Math.min(16 << 20, bytes - written))
      hash.update(block)
      await handle.write(block)
      written += block.length
    }
  } finally {
    await handle.close()
  }
  return hash.digest('hex')
}
