/**
 * Where the time of one trivial job goes (issue 15): a fresh network-on worker of the
 * reference box from a ready state (1 vCPU, 1 GiB as box run's default), then inside it, over
 * ssh, box-job's `run` of `echo hello` traced line by line with bash's clock (PS4 with
 * EPOCHREALTIME: no fork per line), and a few single steps timed on their own (sudo, a
 * useradd, sync). Prints the trace's slowest lines and the total. The guest's box-job is the
 * box's own /usr/local/sbin/box-job (what jobs without network run).
 * Run (it boots QEMU): flock /tmp/box-qemu.lock node --import tsx/esm bench/job-profile.ts
 */
import {mkdtemp, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {startFreshWorker} from '../src/lib/machine/worker.js'
import {sshRun} from '../src/lib/machine/ssh.js'
import {runJob} from '../src/lib/jobs/job.js'
import {jobSpec, referenceJobBox} from '../test/support/job-box.js'
import {loadAverages} from './stats.js'

const root = await mkdtemp(join(tmpdir(), 'box-bench-job-profile-'))
const {box, dir} = await referenceJobBox()
console.log(`load before: ${loadAverages()}`)
try {
  const spec = {
    box: {name: box.name, version: box.version},
    image: {name: box.name, version: box.version, box: box.image},
    cpus: 1,
    memoryMiB: 1024,
    network: true,
    jobUser: 'job',
  }
  const options = {dataDir: join(root, 'data'), cacheDir: join(root, 'cache')}
  const first = await startFreshWorker(spec, options)
  await first.destroy()
  const begun = Date.now()
  const worker = await startFreshWorker(spec, options)
  try {
    console.log(`fresh worker: restore → agent ${worker.timings.agentMs} ms, → ssh ${Date.now() - begun} ms`)
    const timed = async (label: string, command: string[]) => {
      const started = Date.now()
      const result = await sshRun(worker.ssh!, command)
      console.log(`${label}: ${Date.now() - started} ms`)
      return result
    }
    await timed('ssh true (over the master)', ['true'])
    const agent = async (label: string, request: string) => {
      const started = Date.now()
      await worker.askAgent(request)
      console.log(`agent ${label}: ${Date.now() - started} ms`)
    }
    await agent('ping', 'ping')
    await agent('set-clock', `set-clock ${(Date.now() / 1000).toFixed(3)}`)
    await agent('reseed', `reseed ${'ab'.repeat(64)}`)
    await agent('tcp-listening', 'tcp-listening 22')
    const {closeSshMaster} = await import('../src/lib/machine/keys.js')
    const {sshArgs} = await import('../src/lib/machine/ssh.js')
    const {spawn} = await import('../src/lib/core/exec.js')
    for (let i = 0; i < 3; i++) {
      await closeSshMaster(worker.ssh!.controlPath!)
      let started = Date.now()
      await spawn('ssh', sshArgs({...worker.ssh!, controlPath: undefined}, ['true']), {stdin: 'ignore'})
      console.log(`new login, ssh true (no master): ${Date.now() - started} ms`)
      started = Date.now()
      await spawn('ssh', ['-N', '-o', 'ControlMaster=yes', ...sshArgs(worker.ssh!)], {stdin: 'ignore', timeout: 30_000})
      console.log(`new login, master only (ssh -N, ControlPersist): ${Date.now() - started} ms`)
      started = Date.now()
      await spawn('ssh', sshArgs(worker.ssh!, ['true']), {stdin: 'ignore'})
      console.log(`then ssh true over it: ${Date.now() - started} ms`)
    }
    await timed('sudo true', ['sudo', 'true'])
    const setup = [
      'set -e',
      'mkdir -p /run/box-job/job/in /run/box-job/out',
      'printf "user job\\ntimeout 60\\noutput_limit 1024000\\nnproc 100\\nfsize 104857600\\n" > /run/box-job/job/limits',
      'echo "echo hello" > /run/box-job/job/command',
      ': > /run/box-job/job/inputs',
      ': > /run/box-job/job/outputs',
    ].join('\n')
    await timed('staging the job folder', ['sudo', 'sh', '-c', setup])
    const trace = await timed('box-job run (traced)', [
      'sudo',
      'bash',
      '-c',
      // bash takes no PS4 from the environment as root (the text is bash's, not a template).
      // eslint-disable-next-line no-template-curly-in-string
      'PS4=\'+${EPOCHREALTIME} \'; set -x; source /usr/local/sbin/box-job "$@"',
      'box-job',
      'run',
      '/run/box-job/job',
      '/run/box-job/out',
    ])
    const lines = trace.stderr
      .split('\n')
      .map((line) => /^(\++)(\d+\.\d+) (.*)$/.exec(line))
      .filter((match): match is RegExpExecArray => match !== null)
      .map((match) => ({at: Number(match[2]), text: `${match[1]} ${match[3]}`}))
    const steps = lines.slice(0, -1).map((line, i) => ({ms: (lines[i + 1]!.at - line.at) * 1000, text: line.text}))
    if (lines.length < 2) throw new Error(`no trace: ${trace.stderr.slice(0, 2000)}`)
    console.log(`traced: ${lines.length} lines, ${((lines.at(-1)!.at - lines[0]!.at) * 1000).toFixed(0)} ms`)
    for (const step of [...steps].sort((a, b) => b.ms - a.ms).slice(0, 30))
      console.log(`  ${step.ms.toFixed(0).padStart(5)} ms  ${step.text.slice(0, 140)}`)
    await timed('useradd of a new user', [
      'sudo',
      'useradd',
      '--create-home',
      '--user-group',
      '--shell',
      '/bin/sh',
      'u2',
    ])
    await timed('sync', ['sudo', 'sync'])
    await timed('box-job run again (the user exists)', [
      'sudo',
      'sh',
      '/usr/local/sbin/box-job',
      'run',
      '/run/box-job/job',
      '/run/box-job/out',
    ])
  } finally {
    const started = Date.now()
    await worker.destroy()
    console.log(`destroy: ${Date.now() - started} ms`)
  }
  // Trivial jobs without network through the library (what box run does after its CLI start).
  for (let i = 0; i < 4; i++) {
    const started = Date.now()
    const record = await runJob({
      spec: jobSpec({id: `echo-${i}`, command: ['echo', 'hello']}),
      box,
      cacheDir: options.cacheDir,
      resultDir: join(root, `echo-${i}`),
      cpus: 1,
      memoryMiB: 1024,
    })
    const phases = Object.entries(record.phases).map(([name, ms]) => `${name} ${ms}`)
    console.log(`job without network: ${record.status}, ${Date.now() - started} ms: ${phases.join(', ')}`)
  }
} finally {
  console.log(`load after: ${loadAverages()}`)
  await rm(root, {recursive: true, force: true})
  await rm(dir, {recursive: true, force: true})
}
