/**
 * The index of every machine on this host, `<dataDir>/machines.json`: what
 * `box global-status` shows and what keeps `box remove`/`box prune` from deleting a box
 * a linked clone still needs. Writers take a lock file (O_EXCL) and replace the file
 * with rename(2), so readers never see half a file and no update is lost.
 */
import {mkdir} from 'node:fs/promises'
import {join} from 'node:path'

import {z} from 'zod'

import {BoxError} from '../core/errors.js'
import {exists, readJsonWithSchema, writeFileAtomic} from '../core/fs.js'
import {acquireLock} from '../core/lock.js'

const MachineEntrySchema = z.object({
  /** Unique per machine (the lifecycle code picks it; a UUID is fine). */
  id: z.string().min(1),
  /** The machine's name in its Boxfile ("default", "worker1"). */
  name: z.string(),
  projectDir: z.string(),
  /** The machine's state directory (`<projectDir>/.box/<name>`); gone means the machine is gone. */
  stateDir: z.string(),
  provider: z.string(),
  box: z.object({name: z.string(), version: z.string(), provider: z.string()}),
  createdAt: z.string(),
})
export type MachineEntry = z.infer<typeof MachineEntrySchema>

const IndexFileSchema = z.object({
  version: z.literal(1),
  machines: z.array(MachineEntrySchema),
})
type IndexFile = z.infer<typeof IndexFileSchema>

const INDEX_FILE = 'machines.json'
const LOCK_WAIT_MS = 10_000

function indexPath(dataDir: string): string {
  return join(dataDir, INDEX_FILE)
}

/** Add (or replace, by id) a machine. `createdAt` defaults to now. */
export async function registerMachine(
  dataDir: string,
  machine: Omit<MachineEntry, 'createdAt'> & {createdAt?: string},
): Promise<MachineEntry> {
  const entry = MachineEntrySchema.parse({...machine, createdAt: machine.createdAt ?? new Date().toISOString()})
  await updateIndex(dataDir, (machines) => [...machines.filter((existing) => existing.id !== entry.id), entry])
  return entry
}

/** Forget a machine; true when it was listed. */
export async function unregisterMachine(dataDir: string, id: string): Promise<boolean> {
  let found = false
  await updateIndex(dataDir, (machines) => {
    found = machines.some((machine) => machine.id === id)
    return machines.filter((machine) => machine.id !== id)
  })
  return found
}

/** Every machine on this host; with `prune`, entries whose state dir is gone are dropped from the index. */
export async function listMachines(dataDir: string, options: {prune?: boolean} = {}): Promise<MachineEntry[]> {
  const machines = (await readIndex(dataDir)).machines
  if (!options.prune) return machines
  const alive = await Promise.all(machines.map((machine) => exists(machine.stateDir)))
  if (alive.every(Boolean)) return machines
  let kept: MachineEntry[] = []
  // Re-check under the lock: another process may have registered machines meanwhile.
  await updateIndex(dataDir, async (current) => {
    const stillAlive = await Promise.all(current.map((machine) => exists(machine.stateDir)))
    kept = current.filter((_, index) => stillAlive[index])
    return kept
  })
  return kept
}

/** Machines backed by a box: all of a name, or one version, or one version and provider. Machines whose state dir is gone do not count. */
export async function machinesUsingBox(
  dataDir: string,
  box: {name: string; version?: string; provider?: string},
): Promise<MachineEntry[]> {
  const matching = (await readIndex(dataDir)).machines.filter(
    (machine) =>
      machine.box.name === box.name &&
      (box.version === undefined || machine.box.version === box.version) &&
      (box.provider === undefined || machine.box.provider === box.provider),
  )
  const alive = await Promise.all(matching.map((machine) => exists(machine.stateDir)))
  return matching.filter((_, index) => alive[index])
}

// ---------------------------------------------------------------------------------

async function readIndex(dataDir: string): Promise<IndexFile> {
  const file = indexPath(dataDir)
  return readJsonWithSchema(file, IndexFileSchema, `the machine index ${file}`, {
    ifMissing: () => ({version: 1 as const, machines: []}),
    notJson: (reason) => `the machine index ${file} is damaged: ${reason}`,
    invalid: `the machine index ${file} is damaged`,
    suggestions: [`move it away (mv ${file} ${file}.bad); machines will be listed again as they are next started`],
  })
}

/** Read-modify-write under the lock; the new file replaces the old one atomically. */
async function updateIndex(
  dataDir: string,
  change: (machines: MachineEntry[]) => MachineEntry[] | Promise<MachineEntry[]>,
): Promise<void> {
  await mkdir(dataDir, {recursive: true})
  await withLock(`${indexPath(dataDir)}.lock`, async () => {
    const index = await readIndex(dataDir)
    const machines = await change(index.machines)
    await writeFileAtomic(
      indexPath(dataDir),
      `${JSON.stringify({version: 1, machines} satisfies IndexFile, null, 2)}\n`,
    )
  })
}

/** Hold the index lock while `work` runs (a dead writer's lock is taken over). */
async function withLock<T>(lockFile: string, work: () => Promise<T>): Promise<T> {
  const release = await acquireLock(lockFile, {
    waitMs: LOCK_WAIT_MS,
    // The critical section is milliseconds long: poll often.
    pollMs: 5,
    busy: () =>
      new BoxError(`the machine index is locked by another box process (${lockFile})`, {
        suggestions: ['try again; if no other box command is running, remove the lock file'],
      }),
  })
  try {
    return await work()
  } finally {
    await release()
  }
}
