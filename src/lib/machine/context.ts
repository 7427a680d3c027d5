/**
 * What every machine use case shares: the persisted machine record, the context a command
 * hands in, where a machine's files live, and the per-machine lock. A leaf: it imports no
 * other use case. Modules that load zod (box metadata, the machine index) are imported where
 * they are needed, not here: box ssh and box status load this module and must start fast.
 */
import {rename, readFile, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {BoxError} from '../core/errors.js'
import {acquireLock} from '../core/lock.js'
import type {ForwardedPort} from '../core/ports.js'
import type {Progress} from '../core/progress.js'

/** Everything about a machine that must survive between commands (`machine.json`). */
export interface MachineRecord {
  id: string
  name: string
  provider: string
  box: {name: string; version: string; provider: string; path: string}
  user: string
  sshPort?: number
  /** The machine's own key replaced the box's insecure one in the guest. */
  keyInstalled?: boolean
  /** The Boxfile's ssh.private_key_path: a key the box trusts, used on every boot instead of a machine key. */
  privateKeyPath?: string
  /** The guest file holding it: /persistent/… for boxes built by box, else ~/.ssh (in the root filesystem). */
  authorizedKeysFile?: string
  /** Forwards in force at the last boot (host ports may have moved off taken ones). */
  forwardedPorts?: ForwardedPort[]
  /** Provisioners with run: once have run (on the first successful `up`). */
  provisioned: boolean
  createdAt: string
}

export interface MachineContext {
  /** The Boxfile's directory; machines live in `.box/machines/<name>` under it. */
  projectDir: string
  dataDir: string
  cacheDir: string
  progress: Progress
  signal?: AbortSignal
  /** Where provisioner output goes, line by line (already prefixed with the machine name). */
  output?: (line: string) => void
}

export function machineDir(projectDir: string, name: string): string {
  return join(projectDir, '.box', 'machines', name)
}

/** The files box itself keeps in a machine's state directory (the provider's are its own). */
export function machineFiles(stateDir: string): {record: string; key: string; lock: string} {
  return {
    record: join(stateDir, 'machine.json'),
    key: join(stateDir, 'id_ed25519'),
    lock: join(stateDir, 'lock'),
  }
}

/** One command at a time per machine: a second one waits briefly, then says who holds it. */
export async function lockMachine(stateDir: string, name: string): Promise<() => Promise<void>> {
  return acquireLock(machineFiles(stateDir).lock, {
    waitMs: 3000,
    busy: (pid) =>
      new BoxError(`machine ${name} is busy: another box command (pid ${pid}) is working on it`, {
        suggestions: ['wait for that command to finish, then try again'],
      }),
  })
}

export async function readRecord(stateDir: string): Promise<MachineRecord | undefined> {
  try {
    return JSON.parse(await readFile(machineFiles(stateDir).record, 'utf8')) as MachineRecord
  } catch {
    return undefined
  }
}

export async function writeRecord(stateDir: string, record: MachineRecord): Promise<void> {
  const target = machineFiles(stateDir).record
  await writeFile(`${target}.tmp`, `${JSON.stringify(record, null, 2)}\n`, {mode: 0o600})
  await rename(`${target}.tmp`, target)
}
