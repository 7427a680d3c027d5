/**
 * `box secure`: a running machine becomes a locked-down worker or director of a site.
 * The four answers of the old `./secure` (role, site, user name, password) reach the
 * guest over ssh's standard input, never a command line; provisioners/secure (rendered
 * here with the non-secret answers) keeps them in /persistent/secure and installs
 * /persistent/runsecure, which the box applies at every boot.
 */
import {readFile} from 'node:fs/promises'
import {join} from 'node:path'
import ejs from 'ejs'

import {isHostName} from '../boxfile/schema.js'
import type {ResolvedMachine} from '../boxfile/types.js'
import {BoxError} from '../core/errors.js'
import type {MachineContext} from './context.js'
import {PROJECT_ROOT} from '../core/paths.js'
import {runGuestScript} from './provision.js'
import {shQuote} from '../core/shell-quote.js'
import {sshRun, type SshTarget} from './ssh.js'

export const ROLES = ['worker', 'director'] as const
export type Role = (typeof ROLES)[number]

/**
 * Inside the guest, forwarded host ports arrive from the host side of the user-mode
 * network: 10.0.2.2 under QEMU's user networking and VirtualBox's NAT alike. Only ssh
 * from there passes the firewall.
 */
export const USER_NET_HOST = '10.0.2.2'

export interface SecureAnswers {
  role: Role
  site: string
  username: string
  password: string
}

const USERNAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$/

/** Why `site` is not acceptable, or undefined. */
export function siteProblem(site: string): string | undefined {
  if (site === '') return 'the site name must not be empty'
  if (!isHostName(site))
    return `"${site}" is not a host name: use letters, digits and "-" in dot-separated labels, e.g. example.org`
  return undefined
}

export function usernameProblem(username: string): string | undefined {
  if (username === '') return 'the user name must not be empty'
  if (!USERNAME_PATTERN.test(username))
    return `"${username}" is not a user name box accepts: up to 64 letters, digits and . _ @ + -, starting with a letter or digit`
  return undefined
}

/** Never quotes the password back. */
export function passwordProblem(password: string): string | undefined {
  if (password === '') return 'the password must not be empty'
  if (/[\0\r\n]/.test(password)) return 'the password must be one line (no line breaks or NUL characters)'
  return undefined
}

/** provisioners/secure with the non-secret answers filled in (the password is never in it). */
export async function renderSecureScript(
  machine: Pick<ResolvedMachine, 'name' | 'directorPort'>,
  sshUser: string,
  answers: Omit<SecureAnswers, 'password'>,
): Promise<string> {
  const [template, runsecure] = await Promise.all(
    ['secure', 'runsecure'].map((name) => readFile(join(PROJECT_ROOT, 'provisioners', name), 'utf8')),
  )
  return ejs.render(template!, {
    machine: machine.name,
    role: answers.role,
    site: answers.site,
    username: answers.username,
    directorPort: machine.directorPort,
    sshUser,
    hostSide: USER_NET_HOST,
    runsecure,
    q: shQuote,
  })
}

/** Secure a running machine with `answers`; running it again replaces the configuration. */
export async function secureMachine(
  context: MachineContext,
  machine: ResolvedMachine,
  target: SshTarget,
  answers: SecureAnswers,
): Promise<void> {
  const script = await renderSecureScript(machine, target.user, answers)
  const stage = context.progress.stage(`${machine.name}: securing as ${answers.role} of ${answers.site}`)
  const exitCode = await runGuestScript(context, machine.name, target, {
    name: 'secure',
    script,
    viaSh: false,
    privileged: true,
    input: `${answers.password}\n`,
  })
  if (exitCode !== 0) {
    stage.fail()
    throw new BoxError(`securing ${machine.name} failed (exit code ${exitCode})`, {
      exitCode,
      suggestions: [
        'the lines above, prefixed with the machine name, say why',
        'fix that, then run box secure again: it replaces whatever was applied',
      ],
    })
  }
  stage.done()
}

export interface SecureStatus {
  machine: string
  /** box secure has been run on this machine. */
  configured: boolean
  role?: Role
  site?: string
  username?: string
  directorPort?: number
  lockdown: {
    /** The box_secure nftables table is loaded and drops by default. */
    firewall: boolean
    /** sshd's effective settings: public keys only, no root login. */
    sshKeyOnly: boolean
    /** /persistent/runsecure is installed: resnap boots apply the lockdown again. */
    reappliedAtBoot: boolean
    /** The configuration in /persistent/secure is root's only (0700/0600). */
    credentialsPrivate: boolean
  }
  /** Configured and every part of the lockdown in force. */
  inForce: boolean
}

// Prints what the host parses below; reads the password file's mode, never the file.
const STATUS_SCRIPT = `
conf=/persistent/secure
if [ -f "$conf/secure.conf" ]; then
  (. "$conf/secure.conf" && printf 'role=%s\\nsite=%s\\nusername=%s\\ndirector_port=%s\\n' "$ROLE" "$SITE" "$USERNAME" "\${DIRECTOR_PORT:-}")
  echo "modes=$(stat -c '%a:%U' "$conf" "$conf"/* | tr '\\n' ' ')"
fi
[ -x /persistent/runsecure ] && echo runsecure=yes
nft list chain inet box_secure input 2>/dev/null | grep -q 'policy drop;' && echo firewall=yes
sshd -T 2>/dev/null | grep -E '^(passwordauthentication|kbdinteractiveauthentication|permitrootlogin|authenticationmethods) '
exit 0
`

export async function secureStatus(machineName: string, target: SshTarget): Promise<SecureStatus> {
  const {stdout} = await sshRun(target, ['sudo', '-n', 'sh', '-s'], {
    input: STATUS_SCRIPT,
    purpose: `reading the lockdown state of ${machineName}`,
  })
  const values = new Map<string, string>()
  const sshd = new Map<string, string>()
  for (const line of stdout.split('\n')) {
    const assignment = /^([a-z_]+)=(.*)$/.exec(line)
    if (assignment) values.set(assignment[1]!, assignment[2]!)
    const setting = /^([a-z]+) (.*)$/.exec(line)
    if (setting) sshd.set(setting[1]!, setting[2]!)
  }
  const configured = values.has('role')
  const modes = (values.get('modes') ?? '').split(' ').filter(Boolean)
  const lockdown = {
    firewall: values.get('firewall') === 'yes',
    sshKeyOnly:
      sshd.get('passwordauthentication') === 'no' &&
      sshd.get('kbdinteractiveauthentication') === 'no' &&
      sshd.get('permitrootlogin') === 'no' &&
      sshd.get('authenticationmethods') === 'publickey',
    reappliedAtBoot: values.get('runsecure') === 'yes',
    credentialsPrivate: modes.length > 0 && modes.every((mode) => /^[67]00:root$/.test(mode)),
  }
  const port = values.get('director_port')
  return {
    machine: machineName,
    configured,
    role: configured ? (values.get('role') as Role) : undefined,
    site: values.get('site'),
    username: values.get('username'),
    directorPort: port ? Number(port) : undefined,
    lockdown,
    inForce: configured && Object.values(lockdown).every(Boolean),
  }
}
