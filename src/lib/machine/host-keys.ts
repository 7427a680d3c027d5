/**
 * A machine's pinned ssh host keys: `known_hosts` in its folder, learned at the first `up`
 * and checked by every later connection (StrictHostKeyChecking yes). The host pattern is a
 * per-machine HostKeyAlias, not `[127.0.0.1]:PORT`: the forwarded port may change between
 * boots, the machine's key does not.
 */
import {existsSync} from 'node:fs'
import {readFile, rename, rm, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {BoxError} from '../core/errors.js'

/** One public host key as known_hosts holds it: its type and base64 blob (no comment). */
export interface HostKey {
  type: string
  blob: string
}

/** Where the pins live and under which name ssh looks them up. */
export interface HostKeyPin {
  knownHostsFile: string
  alias: string
  /** The machine's name, for error messages. */
  machine: string
}

export function knownHostsFile(stateDir: string): string {
  return join(stateDir, 'known_hosts')
}

/** Stable for the machine's whole life (its id), unlike the port. */
export function hostKeyAlias(record: {id: string}): string {
  return `box-machine-${record.id}`
}

const KEY_TYPE =
  /^(?:ssh-(?:ed25519|rsa|dss)|ecdsa-sha2-nistp(?:256|384|521)|sk-(?:ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)$/
const KEY_BLOB = /^[A-Za-z0-9+/]+={0,2}$/

/** Host keys in a line of "TYPE BLOB" pairs (box-agent's answer); throws on anything else. */
export function parseHostKeyPairs(text: string): HostKey[] {
  const words = text.trim().split(/\s+/).filter(Boolean)
  if (words.length === 0 || words.length % 2 !== 0)
    throw new BoxError(`not a list of ssh host keys: "${text.slice(0, 200)}"`)
  const keys: HostKey[] = []
  for (let i = 0; i < words.length; i += 2) {
    const key = {type: words[i]!, blob: words[i + 1]!}
    if (!isHostKey(key)) throw new BoxError(`not an ssh host key: "${key.type} ${key.blob.slice(0, 40)}"`)
    keys.push(key)
  }
  return keys
}

function isHostKey(key: HostKey): boolean {
  return KEY_TYPE.test(key.type) && KEY_BLOB.test(key.blob) && key.blob.length >= 40
}

/**
 * The host keys a guest printed on its serial console: cloud-init's block between
 * "-----BEGIN SSH HOST KEY KEYS-----" and "-----END SSH HOST KEY KEYS-----" (the last one
 * printed: this boot's). Undefined when the console shows no such block.
 */
export function hostKeysFromConsole(log: string): HostKey[] | undefined {
  const text = log.replace(/\r/g, '')
  const begin = text.lastIndexOf('-----BEGIN SSH HOST KEY KEYS-----')
  if (begin === -1) return undefined
  const end = text.indexOf('-----END SSH HOST KEY KEYS-----', begin)
  if (end === -1) return undefined
  const keys: HostKey[] = []
  for (const line of text.slice(begin, end).split('\n').slice(1)) {
    // A line may carry a console prefix (a timestamp); the key is "TYPE BLOB [COMMENT]".
    const words = line.trim().split(/\s+/)
    const at = words.findIndex((word) => KEY_TYPE.test(word))
    if (at === -1) continue
    const key = {type: words[at]!, blob: words[at + 1] ?? ''}
    if (isHostKey(key)) keys.push(key)
  }
  return keys.length > 0 ? keys : undefined
}

function knownHostsText(alias: string, keys: readonly HostKey[]): string {
  return keys.map((key) => `${alias} ${key.type} ${key.blob}\n`).join('')
}

/** Write the pins whole (a temporary file renamed over), mode 0600. */
export async function writeKnownHosts(
  pin: Pick<HostKeyPin, 'knownHostsFile' | 'alias'>,
  keys: readonly HostKey[],
): Promise<void> {
  if (keys.length === 0) throw new BoxError('no host keys to pin')
  const temporary = `${pin.knownHostsFile}.tmp`
  await writeFile(temporary, knownHostsText(pin.alias, keys), {mode: 0o600})
  await rename(temporary, pin.knownHostsFile)
}

/** The keys pinned for `alias` (lines for other names, comments and markers are ignored); [] when there is no file. */
export async function readKnownHosts(pin: Pick<HostKeyPin, 'knownHostsFile' | 'alias'>): Promise<HostKey[]> {
  let text: string
  try {
    text = await readFile(pin.knownHostsFile, 'utf8')
  } catch {
    return []
  }
  const keys: HostKey[] = []
  for (const line of text.split('\n')) {
    const [names, type, blob] = line.trim().split(/\s+/)
    if (!names || names.startsWith('#') || !type || !blob) continue
    if (!names.split(',').includes(pin.alias)) continue
    const key = {type, blob}
    if (isHostKey(key)) keys.push(key)
  }
  return keys
}

/** Remove the machine's pins; resolves to whether there were any to remove. */
export async function forgetHostKeys(stateDir: string): Promise<boolean> {
  const file = knownHostsFile(stateDir)
  const existed = existsSync(file)
  await rm(file, {force: true})
  return existed
}

/** What OpenSSH prints when the server's key is not the pinned one (or none is pinned). */
export function isHostKeyFailure(sshStderr: string): boolean {
  return /Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED|No \S+ host key is known for/.test(
    sshStderr,
  )
}

/** The reset `box up --reset-host-key` performs, in the words every host key error ends with. */
function hostKeyResetHint(machine: string): string {
  return `if you changed the guest's host key yourself, forget the pinned one and learn the new one: box up ${machine} --reset-host-key (or start over: box destroy ${machine})`
}

/**
 * What ssh refused, in box's words: no pin (forgotten, or a machine made before box pinned
 * keys) or a key other than the pinned one. `sshStderr` gives the fingerprint ssh was shown.
 */
export function hostKeyChangedError(pin: HostKeyPin, port: number, sshStderr = ''): BoxError {
  const detail =
    sshStderr
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => /fingerprint|^SHA256:|has changed|is known for|verification failed/.test(line))
      .join('\n') || undefined
  if (!existsSync(pin.knownHostsFile)) {
    return new BoxError(
      `machine ${pin.machine} has no pinned ssh host key (${pin.knownHostsFile} is missing); box did not connect`,
      {
        detail,
        suggestions: [`learn the guest's key: box up ${pin.machine} --reset-host-key`],
      },
    )
  }
  return new BoxError(
    `the ssh host key of machine ${pin.machine} is not the one pinned at its first \`box up\` (${pin.knownHostsFile}); box did not connect`,
    {
      detail,
      suggestions: [
        `something other than the machine may be answering on 127.0.0.1:${port}, or the guest's host key was replaced`,
        hostKeyResetHint(pin.machine),
      ],
    },
  )
}
