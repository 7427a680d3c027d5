import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {formatCounts, runBatch, summaryRows, type BatchEvent, type BatchResult} from '../lib/jobs/batch.js'

export default class Batch extends BaseCommand<typeof Batch> {
  static summary = 'Run the jobs of a job file, each in its own fresh worker.'
  static description = `At most --parallel workers at once (default: what this host's CPUs and free memory allow). A worker that fails to come up or is lost is retried (the job file's retries:, default 1) and never counted as the job's failure. Results go to results/<job-id>/ beside the job file (result.json, stdout, stderr, the out: files). Ctrl-C stops every worker and keeps the finished results; --resume skips the jobs that have a result. The job file is described in docs/jobs.md.`
  static examples = ['box batch jobs.yaml', 'box batch jobs.yaml --parallel 2 --results /srv/grades', 'box batch jobs.yaml --exclusive --resume']
  static enableJsonFlag = true
  static args = {
    jobFile: Args.string({description: 'The job file (YAML).', required: true}),
  }
  static flags = {
    parallel: Flags.integer({char: 'p', description: 'Workers at once.', min: 1}),
    exclusive: Flags.boolean({description: 'One worker at a time (timing-sensitive grading).', exclusive: ['parallel']}),
    results: Flags.string({description: 'Folder for results/<job-id>/ (default: results beside the job file).'}),
    resume: Flags.boolean({description: 'Skip jobs whose result.json is there already (a worker failure does not count).'}),
  }

  async run(): Promise<BatchResult> {
    const json = this.jsonEnabled()
    const tty = Boolean(process.stderr.isTTY) && !this.flags['no-color'] && !json
    const line = (text: string) => {
      if (json) return
      process.stderr.write(tty ? `\r\u001B[2K${text}\n` : `${text}\n`)
    }
    const onEvent = (event: BatchEvent) => {
      if (event.type === 'finished') {
        const {record} = event
        line(`${record.id}: ${record.status}, exit ${record.exitCode}${record.attempts > 1 ? ` (attempt ${record.attempts})` : ''}`)
      } else if (event.type === 'retry') line(`${event.id}: worker failed (${event.reason}); trying again`)
      else if (event.type === 'skipped') line(`${event.id}: finished before, skipped (--resume)`)
      if (tty) process.stderr.write(`\r\u001B[2K${formatCounts(event.counts)}`)
      else if (!json && event.type === 'finished') line(`  ${formatCounts(event.counts)}`)
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
    if (tty) process.stderr.write('\r\u001B[2K')
    if (!json) {
      const rows = summaryRows(result.records)
      const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)))
      for (const row of rows) this.log(row.map((cell, column) => cell.padEnd(widths[column]!)).join('  ').trimEnd())
      this.log(`${result.records.length} jobs in ${Math.round(result.elapsedMs / 1000)} s with up to ${result.parallel} at once${result.skipped.length > 0 ? `, ${result.skipped.length} skipped` : ''}; results in ${result.resultsDir}`)
    }
    // Non-zero when any job did not succeed: 75 when a worker failure remained, else 1.
    const statuses = new Set(result.records.map((record) => record.status))
    if (statuses.has('infrastructure')) process.exitCode = 75
    else if ([...statuses].some((status) => status !== 'ok')) process.exitCode = 1
    return result
  }
}
