import {Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {jobEndLine, runCommandJob} from '../lib/jobs/run.js'
import type {JobRecord} from '../lib/jobs/spec.js'

export default class Run extends BaseCommand<typeof Run> {
  static summary = 'Run one command in a fresh worker and bring back its output.'
  static description = `A fresh worker restored from the box's ready state (the first run for these settings makes it with a resnap boot), the inputs copied in, the command run as an unprivileged job user with a timeout, an output limit, a process limit and a file-size limit, the outputs copied to ./box-run/<job-id>/ (result.json, stdout, stderr, the --out files), the worker thrown away.
Exit code: the command's own; 124 when it timed out; 123 when it hit the output limit; 75 when the worker failed (it never came up or was lost; the record holds the serial log's tail).
With --network off (the default) the worker has no network interface at all: inputs go in on a read-only disk image and outputs come back on another one, and box-agent starts the command; nothing needs ssh. With --network on they go over ssh, and --follow streams the output as it comes.`
  static examples = [
    'box run --box debian-bookworm -- echo hello',
    'box run --box grader --in submission:/tmp/job --out /tmp/job/feedback.txt --timeout 2m -- make -C /tmp/job grade',
    "box run --machine default --network on --follow -- 'apt-get --version && uname -a'",
  ]
  static enableJsonFlag = true
  static strict = false
  static flags = {
    box: Flags.string({description: 'A stored box (the newest version).', exclusive: ['machine']}),
    machine: Flags.string({description: 'A machine of the Boxfile here: its box, CPUs and memory.'}),
    in: Flags.string({
      description: "HOST[:GUEST] copied in (a folder's contents go into GUEST; default /tmp/job/NAME). Repeatable.",
      multiple: true,
    }),
    out: Flags.string({
      description: 'A guest path brought back into box-run/<job-id>/NAME. Repeatable.',
      multiple: true,
    }),
    timeout: Flags.string({description: 'Stop the command after this long (60s, 2m, 1h).', default: '60s'}),
    'output-limit': Flags.string({
      description: 'Keep at most this much of stdout and of stderr; past it the job is stopped (1M, 500K).',
      default: '1000K',
    }),
    network: Flags.string({
      description: 'Give the worker a network (ssh, user-mode NAT) or none at all.',
      options: ['on', 'off'],
      default: 'off',
    }),
    user: Flags.string({
      description: 'The unprivileged user the command runs as (made in the worker when missing).',
      default: 'job',
    }),
    follow: Flags.boolean({
      description: "Print the command's output here too (as it comes with --network on; once it ended without).",
    }),
  }

  async run(): Promise<JobRecord> {
    const separator = this.argv.indexOf('--')
    const command = separator === -1 ? this.positionals : this.argv.slice(separator + 1)
    const result = await runCommandJob({
      command,
      box: this.flags.box,
      machine: this.flags.machine,
      inputs: this.flags.in ?? [],
      outputs: this.flags.out ?? [],
      timeout: this.flags.timeout,
      outputLimit: this.flags['output-limit'],
      network: this.flags.network as 'on' | 'off',
      user: this.flags.user,
      follow:
        this.flags.follow && !this.jsonEnabled()
          ? (stream, chunk) => void (stream === 'stdout' ? process.stdout : process.stderr).write(chunk)
          : undefined,
      cwd: process.cwd(),
      dataDir: this.config.dataDir,
      cacheDir: this.config.cacheDir,
      version: this.config.version,
      progress: this.progress(),
      signal: this.signal,
    })
    if (!this.jsonEnabled()) this.logToStderr(jobEndLine(result))
    process.exitCode = result.record.exitCode
    return result.record
  }
}
