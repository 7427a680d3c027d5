import {chmod, copyFile, mkdir, readFile, rm, stat} from 'node:fs/promises'
import {dirname} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'

import {BoxError, ExternalError, tail} from '../core/errors.js'
import {run, spawn, type RunResult} from '../core/exec.js'
import {shJoin} from '../core/shell-quote.js'
import {hostKeyChangedError, isHostKeyFailure, type HostKeyPin} from './host-keys.js'

export interface SshTarget {
  host: string
  port: number
  user: string
  /** Private key, mode 0600 (OpenSSH refuses others). */
  keyFile: string
  /** More keys offered after keyFile in the same connection (a new machine's insecure candidates). */
  moreKeyFiles?: string[]
  /** ControlMaster socket: repeated commands reuse one connection. */
  controlPath?: string
  /**
   * The machine's pinned host keys (host-keys.ts): checked strictly. Absent only for
   * throw-away guests of tests and benches, which are not checked.
   */
  hostKeys?: HostKeyPin
  /**
   * Trust on first use: the first login of a machine whose key neither its agent nor its
   * console told, accepting the key it is shown and recording it in the pin file.
   */
  firstUse?: boolean
}

/** ssh's host key options: the machine's own known_hosts under its alias, checked strictly. */
export function hostKeyOptions(target: Pick<SshTarget, 'hostKeys' | 'firstUse'>): string[] {
  if (!target.hostKeys) return ['-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null']
  return [
    '-o',
    `StrictHostKeyChecking=${target.firstUse ? 'accept-new' : 'yes'}`,
    '-o',
    `UserKnownHostsFile=${target.hostKeys.knownHostsFile}`,
    '-o',
    'GlobalKnownHostsFile=/dev/null',
    '-o',
    `HostKeyAlias=${target.hostKeys.alias}`,
    // The file is box's: ssh neither hashes nor adds to it behind box's back.
    '-o',
    'HashKnownHosts=no',
    '-o',
    'UpdateHostKeys=no',
  ]
}

/** OpenSSH options for a box machine: key-only, the pinned host key, no prompts. */
/**
 * ssh's default key exchange without its post-quantum hybrid (sntrup761x25519, OpenSSH 9's
 * first choice): under TCG its key generation and decapsulation took 0.3 s of each 0.9 s login
 * (client and guest), against a few ms for curve25519, next in the default list. What it guards
 * against, traffic recorded now and decrypted by a future quantum computer, does not apply to
 * a loopback connection into a local VM. A pattern: it goes by two names, and bookworm's
 * OpenSSH since 9.2p1-2+deb12u4 (Debian #1088873) puts the suffix-less RFC one,
 * sntrup761x25519-sha512, first, before sntrup761x25519-sha512@openssh.com.
 */
export const SSH_KEX_ALGORITHMS = '-sntrup761x25519-sha512*'

export function sshOptions(target: SshTarget): string[] {
  const options = [
    '-o',
    'BatchMode=yes',
    '-o',
    `KexAlgorithms=${SSH_KEX_ALGORITHMS}`,
    '-o',
    'IdentitiesOnly=yes',
    ...hostKeyOptions(target),
    '-o',
    'LogLevel=ERROR',
    '-o',
    'ConnectTimeout=10',
    '-i',
    target.keyFile,
    ...(target.moreKeyFiles ?? []).flatMap((file) => ['-i', file]),
    '-p',
    String(target.port),
  ]
  if (target.controlPath) {
    options.push('-o', 'ControlMaster=auto', '-o', `ControlPath=${target.controlPath}`, '-o', 'ControlPersist=120s')
  }
  return options
}

/**
 * ssh's argv. The remote side runs one string through the user's shell, so the
 * words of `command` are quoted here; `remoteShell` is passed as it is (box ssh -c).
 */
export function sshArgs(target: SshTarget, command?: readonly string[], remoteShell?: string): string[] {
  const remote = remoteShell ?? (command && command.length > 0 ? shJoin(command) : undefined)
  return [...sshOptions(target), `${target.user}@${target.host}`, ...(remote === undefined ? [] : ['--', remote])]
}

/** Run a command (words, quoted for the remote shell) in the guest and collect its output. */
export async function sshRun(
  target: SshTarget,
  command: string[],
  options: {input?: string; timeoutMs?: number; purpose?: string} = {},
): Promise<RunResult> {
  try {
    return await run('ssh', sshArgs(target, command), {
      input: options.input,
      stdin: options.input === undefined ? 'ignore' : undefined,
      timeout: options.timeoutMs,
      purpose: options.purpose ?? `running \`${command.join(' ')}\` in the guest`,
    })
  } catch (error) {
    throw hostKeyError(target, error) ?? error
  }
}

/** The clear error for a connection ssh refused over the host key; undefined for any other failure. */
export function hostKeyError(target: SshTarget, failure: unknown): BoxError | undefined {
  if (!target.hostKeys || target.firstUse) return undefined
  // An ExternalError from run() keeps ssh's own result as its cause; spawn() hands the result.
  const result = (failure instanceof ExternalError ? failure.cause : failure) as
    {exitCode?: number; stderr?: unknown} | undefined
  // 255: ssh's own failure (a remote command's output may say anything).
  if (result?.exitCode !== 255) return undefined
  const stderr = typeof result.stderr === 'string' ? result.stderr : ''
  return isHostKeyFailure(stderr) ? hostKeyChangedError(target.hostKeys, target.port, stderr) : undefined
}

/** Copy a key to `dest` with mode 0600, as OpenSSH requires (git does not keep file modes). */
export async function installPrivateKey(source: string, dest: string): Promise<string> {
  await mkdir(dirname(dest), {recursive: true})
  await copyFile(source, dest)
  await chmod(dest, 0o600)
  return dest
}

export interface WaitForSshOptions {
  timeoutMs: number
  /** Checked between attempts: a dead QEMU fails at once instead of waiting out the timeout. */
  isAlive?: () => boolean | Promise<boolean>
  serialLog?: string
  signal?: AbortSignal
  onAttempt?: (elapsedMs: number) => void
  /**
   * Asks the guest whether sshd listens yet (box-agent); undefined when the guest cannot
   * tell, rejects when no answer came. Until it says true, no connection is tried.
   */
  sshListening?: () => Promise<boolean | undefined>
  /** Said after "ssh did not answer within N s" when the wait runs out: what that most likely means for this box. */
  timeoutReason?: string
  /** A guest whose agent has not answered at all by then is probed instead (its agent may be off); 60 s. */
  agentSilenceMs?: number
  /** Already known (waitForSshListening ran): whether the agent said sshd listens. */
  listening?: boolean
  /**
   * With the target's controlPath: the login that gets in only opens the master connection
   * (`ssh -N`, put in the background by ControlPersist once authenticated), no session, so
   * the first command is not kept waiting for a shell of the probe's own (half a second under TCG).
   */
  masterOnly?: boolean
}

/**
 * Poll until sshd accepts our key; on timeout the error shows the serial log's tail. With a
 * `controlPath`, the connection that gets in stays as the master for the commands that follow.
 *
 * A probe made before the guest's network is up hangs: QEMU's user-mode network accepts the
 * connection on the host at once but retransmits its SYN to the guest only seconds later,
 * and keeps doing so after the host gave up: each abandoned probe reaches sshd later and
 * costs it a fork when the guest is busiest. So when the guest can say whether sshd listens
 * (`sshListening`), the first probe waits for that, and for sshd's banner up to 10 s. Else a
 * probe waits 2 s for the banner (about 0.3 s under TCG once sshd listens) and the next one
 * starts afresh; after a minute, when only a loaded host boots that slowly, 10 s.
 */
export async function waitForSsh(target: SshTarget, options: WaitForSshOptions): Promise<number> {
  const started = Date.now()
  const check = deadlineCheck(started, options)
  const masterOnly = options.masterOnly === true && target.controlPath !== undefined
  // A master that is there already (ssh -N would not use it) is a login that works.
  if (masterOnly) {
    if (await masterAlive(target.controlPath!)) return 0
    // A dead master's socket: with ControlMaster=yes ssh would go on without one, and -N never ends.
    await rm(target.controlPath!, {force: true})
  }
  const listening = options.listening ?? (await waitForSshListening(options, started))
  for (;;) {
    options.signal?.throwIfAborted()
    options.onAttempt?.(Date.now() - started)
    const connectTimeoutS = listening || Date.now() - started >= 60_000 ? 10 : 2
    // First: ssh takes an option's first value (sshOptions has its own ConnectTimeout).
    const args = [
      '-o',
      `ConnectTimeout=${connectTimeoutS}`,
      ...(masterOnly ? ['-N', '-o', 'ControlMaster=yes', ...sshArgs(target)] : sshArgs(target, ['true'])),
    ]
    const result = await spawn('ssh', args, {
      reject: false,
      stdin: 'ignore',
      timeout: (connectTimeoutS + 10) * 1000,
      cancelSignal: options.signal,
    })
    if (result.exitCode === 0) return Date.now() - started
    // A key that is not the pinned one will not become it: no waiting out the timeout.
    const refused = hostKeyError(target, result)
    if (refused) throw refused
    // Another process may have made the master meanwhile (this probe then had none of its own).
    if (masterOnly && (await masterAlive(target.controlPath!))) return Date.now() - started
    await check()
    await sleep(250)
  }
}

/** Whether an ssh master answers on `controlPath`. */
async function masterAlive(controlPath: string): Promise<boolean> {
  const result = await spawn('ssh', ['-o', `ControlPath=${controlPath}`, '-O', 'check', 'box-machine'], {
    reject: false,
    stdin: 'ignore',
    timeout: 3000,
  })
  return result.exitCode === 0
}

/**
 * Wait until the guest's agent says sshd listens; resolves to whether it said so (false when
 * the guest cannot tell or its agent stayed silent: then probes find out).
 */
export async function waitForSshListening(options: WaitForSshOptions, started = Date.now()): Promise<boolean> {
  const check = deadlineCheck(started, options)
  let heard = false
  const agentSilenceMs = options.agentSilenceMs ?? 60_000
  while (options.sshListening && (heard || Date.now() - started < agentSilenceMs)) {
    options.signal?.throwIfAborted()
    options.onAttempt?.(Date.now() - started)
    const answer = await options.sshListening().then(
      (value) => {
        heard = true
        return value
      },
      () => false,
    )
    if (answer === undefined) return false
    if (answer) return true
    await check()
    await sleep(200)
  }
  return false
}

function deadlineCheck(started: number, options: WaitForSshOptions): () => Promise<void> {
  const deadline = started + options.timeoutMs
  return async () => {
    if (options.isAlive && !(await options.isAlive())) {
      throw new BoxError('the machine stopped while box waited for ssh', {
        detail: await serialTail(options.serialLog),
        suggestions: serialHint(options.serialLog),
      })
    }
    if (Date.now() > deadline) {
      const why = options.timeoutReason ? `: ${options.timeoutReason}` : ''
      throw new BoxError(`ssh did not answer within ${Math.round(options.timeoutMs / 1000)} s${why}`, {
        detail: await serialTail(options.serialLog),
        suggestions: serialHint(options.serialLog),
      })
    }
  }
}

async function serialTail(serialLog?: string): Promise<string | undefined> {
  if (!serialLog) return undefined
  try {
    if ((await stat(serialLog)).size === 0) return '(the serial console printed nothing)'
    return tail((await readFile(serialLog, 'utf8')).replace(/\r/g, ''), 25)
  } catch {
    return undefined
  }
}

function serialHint(serialLog?: string): string[] {
  return serialLog ? [`the whole serial log: ${serialLog}`] : []
}
