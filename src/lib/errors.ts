/** Exit codes box uses; anything a user can fix is USAGE or FAILURE. */
export const ExitCode = {
  FAILURE: 1,
  USAGE: 2,
  INTERRUPTED: 130,
} as const

export interface BoxErrorOptions {
  /** Process exit code for the CLI (default 1). */
  exitCode?: number
  /** Short, actionable next steps shown under the message. */
  suggestions?: string[]
  /** Extra detail (a log tail, a process's stderr) shown after the message. */
  detail?: string
  cause?: unknown
}

/** The one error class for failures a user should see: message, fix, exit code. */
export class BoxError extends Error {
  readonly exitCode: number
  readonly suggestions: string[]
  readonly detail?: string

  constructor(message: string, options: BoxErrorOptions = {}) {
    super(message, { cause: options.cause })
    this.name = 'BoxError'
    this.exitCode = options.exitCode ?? ExitCode.FAILURE
    this.suggestions = options.suggestions ?? []
    this.detail = options.detail
  }
}

/** Last `lines` lines of a text, for error details. */
export function tail(text: string, lines = 20): string {
  const all = text.replace(/\s+$/, '').split('\n')
  return all.slice(-lines).join('\n')
}
