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
    super(message, {cause: options.cause})
    this.name = 'BoxError'
    this.exitCode = options.exitCode ?? ExitCode.FAILURE
    this.suggestions = options.suggestions ?? []
    this.detail = options.detail
  }
}

/** A program box ran failed: the error names the command and its arguments (Shopify CLI's ExternalError). */
export class ExternalError extends BoxError {
  readonly command: string
  readonly args: readonly string[]

  constructor(message: string, options: BoxErrorOptions & {command: string; args: readonly string[]}) {
    const {command, args, ...rest} = options
    super(message, rest)
    this.name = 'ExternalError'
    this.command = command
    this.args = args
  }
}

/** A path that cannot happen did: a bug in box, not something the user can fix. */
export class BugError extends BoxError {
  constructor(message: string, options: Omit<BoxErrorOptions, 'suggestions'> = {}) {
    super(`internal error: ${message}`, {
      ...options,
      suggestions: ['this is a bug in box: please report it with the command you ran'],
    })
    this.name = 'BugError'
  }
}

/** A BoxError as the CLI prints it on stderr: message, detail indented, suggestions. */
export function formatBoxError(error: BoxError): string {
  const lines = [`Error: ${error.message}`]
  if (error.detail) lines.push(error.detail.replace(/^/gm, '  | '))
  for (const suggestion of error.suggestions) lines.push(`  → ${suggestion}`)
  return `${lines.join('\n')}\n`
}

/** A BoxError as `--json` prints it on stdout. */
export function boxErrorJson(error: BoxError): {
  error: {message: string; detail?: string; suggestions: string[]; exitCode: number}
} {
  return {
    error: {message: error.message, detail: error.detail, suggestions: error.suggestions, exitCode: error.exitCode},
  }
}

/** Last `lines` lines of a text, for error details. */
export function tail(text: string, lines = 20): string {
  const all = text.replace(/\s+$/, '').split('\n')
  return all.slice(-lines).join('\n')
}
