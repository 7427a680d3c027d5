import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {batchProgress} from '../cli/batch-progress.js'
import {BoxError, ExitCode} from '../lib/core/errors.js'
import {runBatch, summaryRows, type BatchResult} from '../lib/jobs/batch.js'
import type {SlurmRunResult} from '../lib/jobs/engines/slurm.js'

export default class Batch extends BaseCommand<typeof Batch> {
  static summary = 'Run the jobs of a job file, each in its own fresh worker.'
  static description = `At most --parallel workers at once (default: what this host's CPUs and free memory allow). A worker that fails to come up or is lost is retried (the job file's retries:, default 1) and never counted as the job's failure. Results go to results/<job-id>/ beside the job file (result.json, stdout, stderr, the out: files). Ctrl-C stops every worker and keeps the finished results; --resume skips the jobs that have a result. The job file is described in docs/jobs.md.`
  static examples = [
    'box batch jobs.yaml',
    'box batch jobs.yaml --parallel 2 --results /srv/grades',
    'box batch jobs.yaml --exclusive --resume',
    'box batch jobs.yaml --on slurm --partition vm --max-running 50 --time 30 --shared /shared/grading --results /shared/grading/results --wait',
  ]
  static enableJsonFlag = true
  static args = {
    jobFile: Args.string({description: 'The job file (YAML).', required: true}),
  }
  static flags = {
    parallel: Flags.integer({char: 'p', description: 'Workers at once.', min: 1}),
    exclusive: Flags.boolean({
      description: 'One worker at a time (timing-sensitive grading).',
      exclusive: ['parallel'],
    }),
    results: Flags.string({description: 'Folder for results/<job-id>/ (default: results beside the job file).'}),
    resume: Flags.boolean({
      description: 'Skip jobs whose result.json is there already (a worker failure does not count).',
    }),
    on: Flags.string({
      description: 'Where the jobs run: this host, or a Slurm cluster as one job array (docs/fleet.md).',
      options: ['local', 'slurm'],
      default: 'local',
    }),
    partition: Flags.string({description: 'Slurm partition (--on slurm).'}),
    'max-running': Flags.integer({
      description: "At most this many jobs at once across the cluster (--on slurm; the array's %N).",
      min: 1,
    }),
    time: Flags.string({description: 'Slurm time limit per job, as sbatch --time takes it (--on slurm).'}),
    shared: Flags.string({
      description:
        'The path every node sees at the same place: inputs and the results folder go under it (--on slurm; default BOX_SLURM_SHARED).',
    }),
    wait: Flags.boolean({
      description: 'Follow the array to its end with the progress line and the summary (--on slurm).',
    }),
    hold: Flags.boolean({
      description: 'Submit the array held: nothing starts until scontrol release ARRAY_ID (--on slurm).',
      exclusive: ['wait'],
    }),
  }

  async run(): Promise<BatchResult | SlurmRunResult> {
    const slurm = this.flags.on === 'slurm'
    const slurmOnly = (['partition', 'max-running', 'time', 'shared', 'wait', 'hold'] as const).filter(
      (name) => this.flags[name] !== undefined && this.flags[name] !== false,
    )
    if (!slurm && slurmOnly.length > 0)
      throw new BoxError(`--${slurmOnly[0]} is for --on slurm`, {
        exitCode: ExitCode.USAGE,
        suggestions: ['add --on slurm, or leave it out'],
      })
    const localOnly = (['parallel', 'exclusive', 'resume'] as const).filter(
      (name) => this.flags[name] !== undefined && this.flags[name] !== false,
    )
    if (slurm && localOnly.length > 0)
      throw new BoxError(`--${localOnly[0]} is for a batch on this host`, {
        exitCode: ExitCode.USAGE,
        suggestions: ['with --on slurm, cap the jobs at once with --max-running'],
      })
    const json = this.jsonEnabled()
    const {onEvent, clear} = batchProgress({json, plain: this.flags['no-color']})
    if (slurm) {
      const {slurmEngine} = await import('../lib/jobs/engines/slurm.js')
      const submitted = await slurmEngine.run({
        jobFile: this.args.jobFile,
        resultsDir: this.flags.results,
        partition: this.flags.partition,
        maxRunning: this.flags['max-running'],
        timeLimit: this.flags.time,
        shared: this.flags.shared,
        wait: this.flags.wait,
        hold: this.flags.hold,
        cwd: process.cwd(),
        dataDir: this.config.dataDir,
        cacheDir: this.config.cacheDir,
        version: this.config.version,
        progress: this.progress(),
        onEvent,
        signal: this.signal,
      })
      clear()
      if (!submitted.waited) {
        if (!json)
          this.log(
            `submitted ${submitted.jobs} jobs as Slurm array ${submitted.arrayJobId} (batch ${submitted.batchId}); results in ${submitted.resultsDir}\nfollow it: box batch status ${this.args.jobFile}${this.flags.results ? ` --results ${this.flags.results}` : ''}`,
          )
        return submitted
      }
      if (!json) this.printSummary(submitted)
      const counts = submitted.status.counts
      if (counts.infrastructure > 0 || counts.lost > 0) process.exitCode = 75
      else if (counts.failed > 0 || counts.cancelled > 0) process.exitCode = 1
      return submitted
    }
    const result = await runBatch({
      jobFile: this.args.jobFile,
      parallel: this.flags.parallel,
      exclusive: this.flags.exclusive,
      resultsDir: this.flags.results,
      resume: this.flags.resume,
      cwd: process.cwd(),
      dataDir: this.config.dataDir,
      cacheDir: this.config.cacheDir,
      version: this.config.version,
      progress: this.progress(),
      onEvent,
      signal: this.signal,
    })
    clear()
    if (!json) this.printSummary(result)
    // Non-zero when any job did not succeed: 75 when a worker failure remained, else 1.
    const statuses = new Set(result.records.map((record) => record.status))
    if (statuses.has('infrastructure')) process.exitCode = 75
    else if ([...statuses].some((status) => status !== 'ok')) process.exitCode = 1
    return result
  }

  private printSummary(result: BatchResult): void {
    this.logTable(summaryRows(result.records))
    const cap = result.parallel > 0 ? `with up to ${result.parallel} at once` : 'with no cap'
    this.log(
      `${result.records.length} jobs in ${Math.round(result.elapsedMs / 1000)} s ${cap}${result.skipped.length > 0 ? `, ${result.skipped.length} skipped` : ''}; results in ${result.resultsDir}`,
    )
  }
}
