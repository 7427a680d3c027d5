import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../../cli/base-command.js'
import {cancelBatch, findBatch, type SlurmCancelResult} from '../../lib/jobs/engines/slurm.js'

export default class BatchCancel extends BaseCommand<typeof BatchCancel> {
  static summary = 'Cancel a Slurm batch: every queued and running job of it (scancel).'
  static description = `Slurm sends each running task SIGTERM (SIGKILL after the cluster's KillWait); box stops the task's worker before it exits, so no QEMU is left on the node. Results of finished jobs stay.`
  static examples = ['box batch cancel jobs.yaml', 'box batch cancel jobs.yaml --results /shared/grading/results']
  static enableJsonFlag = true
  static args = {
    jobFile: Args.string({description: 'The job file the batch was submitted from.', required: true}),
  }
  static flags = {
    results: Flags.string({description: "The batch's results folder, when it was given to box batch --results."}),
  }

  async run(): Promise<SlurmCancelResult> {
    const state = await findBatch({jobFile: this.args.jobFile, resultsDir: this.flags.results, cwd: process.cwd()})
    const result = await cancelBatch(state)
    if (!this.jsonEnabled())
      this.log(
        `cancelled ${result.cancelled} queued or running jobs of batch ${result.batchId} (Slurm array ${result.arrayJobId})`,
      )
    return result
  }
}
