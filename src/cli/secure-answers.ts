/** `box secure`'s four answers, from flags or questions (the flaggable prompts of ./prompts.ts). */
import {createInterface} from 'node:readline'

import {
  passwordProblem,
  ROLES,
  siteProblem,
  usernameProblem,
  type Role,
  type SecureAnswers,
} from '../lib/machine/secure.js'
import {Asker} from './prompts.js'

export interface AnswerSources {
  role?: string
  site?: string
  username?: string
  /** Read the password from the first line of `stdin` (--password-stdin). */
  passwordFromStdin: boolean
  /** Whether missing answers may be asked for (a terminal and no --yes). */
  interactive: boolean
  /** The Boxfile's `site`, offered as the default. */
  defaultSite?: string
  stdin?: NodeJS.ReadableStream
}

/**
 * The answers, from flags first, then from questions. Without questions (no terminal,
 * or --yes) a missing answer is an error naming its flag, never a hang.
 */
export async function collectAnswers(sources: AnswerSources): Promise<SecureAnswers> {
  const asker = new Asker(sources.interactive)
  const role = await asker.answer<Role>({
    flagName: '--role',
    flag: sources.role as Role | undefined,
    validate: (value) =>
      (ROLES as readonly string[]).includes(value) ? undefined : `must be one of ${ROLES.join(', ')}, not "${value}"`,
    ask: (prompts) =>
      prompts.select<Role>({
        message: 'Worker or director?',
        choices: [
          {value: 'worker', name: 'worker', description: 'runs jobs for the site'},
          {value: 'director', name: 'director', description: 'hands out jobs to the workers of the site'},
        ],
      }),
    what: 'role',
    example: '--role worker',
  })
  const site = await asker.answer({
    flagName: '--site',
    flag: sources.site,
    validate: siteProblem,
    ask: async (prompts) =>
      (
        await prompts.input({
          message: 'Site name?',
          default: sources.defaultSite,
          validate: (value) => siteProblem(value.trim()) ?? true,
        })
      ).trim(),
    default: sources.defaultSite,
    what: 'site name',
    example: '--site example.org (or site: in the Boxfile)',
  })
  const username = await asker.answer({
    flagName: '--username',
    flag: sources.username,
    validate: usernameProblem,
    ask: async (prompts) =>
      (await prompts.input({message: 'User name?', validate: (value) => usernameProblem(value.trim()) ?? true})).trim(),
    what: 'user name',
    example: '--username alice',
  })
  const password = await asker.answer({
    flagName: '--password-stdin',
    flag: sources.passwordFromStdin ? await readFirstLine(sources.stdin ?? process.stdin) : undefined,
    validate: passwordProblem,
    ask: async (prompts) => {
      for (;;) {
        const first = await prompts.password({
          message: 'Password?',
          mask: '*',
          validate: (value) => passwordProblem(value) ?? true,
        })
        if ((await prompts.password({message: 'Password again?', mask: '*'})) === first) return first
        process.stderr.write('The two passwords differ; once more.\n')
      }
    },
    what: 'password',
    example: "a password manager's output piped in: pass show site | box secure --password-stdin …",
  })
  return {role, site, username, password}
}

/** The first line of a stream (without its line break); the rest is not read. */
async function readFirstLine(stream: NodeJS.ReadableStream): Promise<string> {
  const lines = createInterface({input: stream, crlfDelay: Number.POSITIVE_INFINITY})
  for await (const line of lines) {
    lines.close()
    return line
  }
  return ''
}
