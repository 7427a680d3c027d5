/**
 * Progress for long work, always on stderr so stdout stays machine-readable.
 * On a TTY a stage is one line rewritten in place (spinner, elapsed time, detail);
 * otherwise each stage prints a start line and an end line.
 */
export interface Stage {
  /** Replace the detail text ("412 MB of 1.2 GB, 85 MB/s, ETA 9 s"). */
  update(detail: string): void
  /** Finish the stage; `summary` is shown after the elapsed time. */
  done(summary?: string): void
  fail(summary?: string): void
}

export interface Progress {
  stage(name: string): Stage
  info(message: string): void
  warn(message: string): void
  /** A line of other output (a guest's, on stdout by default) shown above the live stage line, which redraws below it. */
  print(line: string, to?: NodeJS.WritableStream): void
}

export interface ProgressOptions {
  stream?: NodeJS.WriteStream | NodeJS.WritableStream
  /** Force line mode even on a TTY. */
  plain?: boolean
  /** Print nothing (for --json or library use). */
  silent?: boolean
}

const FRAMES = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏']

export function formatDuration(ms: number): string {
  if (ms < 10_000) return `${(ms / 1000).toFixed(1)} s`
  if (ms < 120_000) return `${Math.round(ms / 1000)} s`
  return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB']
  let value = bytes
  let unit = 0
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000
    unit++
  }
  return `${value >= 100 || unit === 0 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`
}

export function createProgress(options: ProgressOptions = {}): Progress {
  const stream = options.stream ?? process.stderr
  const silent = options.silent ?? false
  const tty = !options.plain && Boolean((stream as NodeJS.WriteStream).isTTY)
  const write = (text: string) => {
    if (!silent) stream.write(text)
  }

  /** The live stage's line, drawn again after other output (on a TTY). */
  let redraw: (() => void) | undefined
  return {
    // On a TTY a stage's line may be showing: clear it first (the spinner redraws below).
    info: (message) => write(`${tty ? '\r\u001B[2K' : ''}${message}\n`),
    warn: (message) => write(`${tty ? '\r\u001B[2K' : ''}warning: ${message}\n`),
    print(line, to = process.stdout) {
      // Cleared even when silent: the line goes to `to` whatever the progress shows.
      if (tty && !silent) stream.write('\r\u001B[2K')
      to.write(`${line}\n`)
      redraw?.()
    },
    stage(name) {
      const started = Date.now()
      let detail = ''
      let frame = 0
      let timer: NodeJS.Timeout | undefined
      const render = () => {
        const elapsed = formatDuration(Date.now() - started)
        write(`\r\u001B[2K${FRAMES[frame++ % FRAMES.length]} ${name} (${elapsed})${detail ? ` ${detail}` : ''}`)
      }
      if (tty) {
        render()
        redraw = render
        timer = setInterval(render, 120)
        timer.unref()
      } else {
        write(`==> ${name}\n`)
      }
      let lastPlain = 0
      const finish = (mark: string, summary?: string) => {
        if (timer) clearInterval(timer)
        if (redraw === render) redraw = undefined
        const line = `${mark} ${name} (${formatDuration(Date.now() - started)})${summary ? `: ${summary}` : ''}`
        write(tty ? `\r\u001B[2K${line}\n` : `${line}\n`)
      }
      return {
        update(text) {
          detail = text
          // Line mode: at most one detail line every 5 s, so logs stay readable.
          if (!tty && Date.now() - lastPlain >= 5000) {
            lastPlain = Date.now()
            write(`    ${text}\n`)
          }
        },
        done: (summary) => finish('✔', summary),
        fail: (summary) => finish('✘', summary),
      }
    },
  }
}

/** A byte transfer for a stage's detail: "412 MB of 1.2 GB (34 %), 85 MB/s, ETA 9.6 s". */
export function formatTransfer(progress: {received: number; total?: number; rate: number; eta?: number}): string {
  const {received, total, rate, eta} = progress
  const parts = [
    total
      ? `${formatBytes(received)} of ${formatBytes(total)} (${Math.floor((received / total) * 100)} %)`
      : formatBytes(received),
  ]
  if (rate > 0) parts.push(`${formatBytes(rate)}/s`)
  if (eta !== undefined && Number.isFinite(eta)) parts.push(`ETA ${formatDuration(eta * 1000)}`)
  return parts.join(', ')
}
