import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../../cli/base-command.js'
import {batchProgress} from '../../cli/batch-progress.js'
import {batchStatus, findBatch, waitForBatch, type SlurmBatchStatus} from '../../lib/jobs/engines/slurm.js'

export default class BatchStatus extends BaseCommand<typeof BatchStatus> {
  static summary = 'Show where the jobs of a Slurm batch are: queued, running, done, failed.'
  static description = `For a batch submitted with box batch --on slurm: squeue --json for the jobs Slurm still holds, result.json for the rest (no accounting database needed). A worker failure (infrastructure) is counted apart from the jobs' own failures.`
  static examples = [
    'box batch status jobs.yaml',
    'box batch status jobs.yaml --results /shared/grading/results --json',
    'box batch status jobs.yaml --wait',
  ]
  static enableJsonFlag = true
  static args = {
    jobFile: Args.string({description: 'The job file the batch was submitted from.', required: true}),
  }
  static flags = {
    results: Flags.string({description: "The batch's results folder, when it was given to box batch --results."}),
    wait: Flags.boolean({description: 'Follow the batch to its end.'}),
  }

  async run(): Promise<SlurmBatchStatus> {
    const state = await findBatch({jobFile: this.args.jobFile, resultsDir: this.flags.results, cwd: process.cwd()})
    let status: SlurmBatchStatus
    if (this.flags.wait) {
      const progress = batchProgress({json: this.jsonEnabled(), plain: this.flags['no-color']})
      status = (await waitForBatch(state, {onEvent: progress.onEvent, signal: this.signal})).status
      progress.clear()
    } else {
      status = await batchStatus(state)
    }
    if (!this.jsonEnabled()) {
      const rows = [
        ['JOB', 'STATE', 'EXIT', 'ATTEMPTS', 'NODE', 'SLURM JOB', 'REASON'],
        ...status.jobs.map((job) => [
          job.id,
          job.state,
          job.exitCode === undefined ? '-' : String(job.exitCode),
          job.attempts === undefined ? '-' : String(job.attempts),
          job.node ?? '-',
          job.slurmJobId ?? '-',
          job.reason ?? '',
        ]),
      ]
      this.logTable(rows)
      const c = status.counts
      this.log(
        `batch ${status.batchId} (Slurm array ${status.arrayJobId}): ${c.total} jobs · queued ${c.queued} · running ${c.running} · done ${c.done} · failed ${c.failed} · worker failures ${c.infrastructure}${c.cancelled ? ` · cancelled ${c.cancelled}` : ''}${c.lost ? ` · lost ${c.lost}` : ''}`,
      )
    }
    return status
  }
}
