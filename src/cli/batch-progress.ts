import {formatCounts, type BatchEvent} from '../lib/jobs/batch.js'

/**
 * What `box batch` and `box batch status --wait` print while jobs finish: a line per job
 * (and per retry) on stderr, the counts as a live line on a terminal or after each job
 * otherwise, nothing with --json.
 */
export function batchProgress(options: {json: boolean; plain: boolean}): {
  onEvent: (event: BatchEvent) => void
  /** Clears the live line (before a summary). */
  clear: () => void
} {
  const {json} = options
  const tty = Boolean(process.stderr.isTTY) && !options.plain && !json
  const line = (text: string) => process.stderr.write(tty ? `\r\u001B[2K${text}\n` : `${text}\n`)
  return {
    onEvent(event) {
      if (json) return
      if (event.type === 'finished') {
        const {record} = event
        line(
          `${record.id}: ${record.status}, exit ${record.exitCode}${record.attempts > 1 ? ` (attempt ${record.attempts})` : ''}`,
        )
      } else if (event.type === 'retry') line(`${event.id}: ${event.reason}`)
      else if (event.type === 'skipped') line(`${event.id}: finished before, skipped (--resume)`)
      if (tty) process.stderr.write(`\r\u001B[2K${formatCounts(event.counts)}`)
      else if (event.type === 'finished') line(`  ${formatCounts(event.counts)}`)
    },
    clear() {
      if (tty) process.stderr.write('\r\u001B[2K')
    },
  }
}
