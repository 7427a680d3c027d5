import {BoxError, ExitCode} from '../lib/core/errors.js'

export interface Interrupt {
  /** Aborted on the first Ctrl-C / SIGTERM, with a BoxError (exit 130) as its reason. */
  signal: AbortSignal
  /** Whether a signal came (the reason is then the error to report). */
  readonly interrupted: boolean
  /** Stop listening (the command ended). */
  dispose(): void
}

/**
 * Ctrl-C and SIGTERM for a command (oclif's BaseCommand and the fast path alike): the first
 * aborts the signal so library code stops its QEMU and cleans up; a second exits at once.
 */
export function listenForInterrupt(): Interrupt {
  const controller = new AbortController()
  let interrupted = false
  const onSignal = (signal: NodeJS.Signals) => {
    if (interrupted) process.exit(ExitCode.INTERRUPTED)
    interrupted = true
    controller.abort(new BoxError(`interrupted (${signal})`, {exitCode: ExitCode.INTERRUPTED}))
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  return {
    signal: controller.signal,
    get interrupted() {
      return interrupted
    },
    dispose() {
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
    },
  }
}
