import {text} from 'node:stream/consumers'

import {BaseCommand} from '../../cli/base-command.js'
import {runSlurmTask, type SlurmTaskResult} from '../../lib/jobs/engines/slurm-task.js'

/** Run by the batch script box batch --on slurm generates: one array task. Not for people. */
export default class BatchTask extends BaseCommand<typeof BatchTask> {
  static summary = 'Run one array task of a Slurm batch (called by the generated batch script).'
  static hidden = true
  static enableJsonFlag = true

  async run(): Promise<SlurmTaskResult> {
    const result = await runSlurmTask({
      planText: await text(process.stdin),
      env: process.env,
      dataDir: this.config.dataDir,
      cacheDir: this.config.cacheDir,
      version: this.config.version,
      progress: this.progress(),
      signal: this.signal,
    })
    this.logToStderr(result.message)
    process.exitCode = result.exitCode
    return result
  }
}
