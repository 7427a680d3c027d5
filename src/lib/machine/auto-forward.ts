/**
 * forward_ports: auto — a forward on 127.0.0.1 for each TCP port that starts listening in
 * the guest (as Lima does), added while the machine runs.
 *
 * Who watches: `box up` starts a small detached process (`box __auto-forward STATE_DIR
 * PROVIDER`, answered by the fast path) that lives as long as the machine's QEMU. Every
 * POLL_MS it asks box-agent which ports listen (no ssh login) and adds the new ones through
 * the provider (QEMU: the monitor's hostfwd_add). It writes what it added to
 * auto-forwards.json, which `box port` reads, and exits by itself once the machine stops;
 * halt and destroy stop it at once. A forward stays until the machine stops (a server that
 * restarts finds its port again). Ports under 1024, ssh's and the ones the Boxfile forwards
 * are left as configured.
 */
import {readFile, rm, writeFile, rename} from 'node:fs/promises'
import {join} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'

import {providerFor} from '../../providers/index.js'
import type {Provider} from '../../providers/provider.js'
import {spawn} from '../core/exec.js'
import {defaultCacheDir, PROJECT_ROOT} from '../core/paths.js'
import {freePort, isPortFree, type ForwardedPort} from '../core/ports.js'
import {readRecord} from './context.js'

/** The hidden word bin/run.js answers by watching (fast-path.ts). */
export const AUTO_FORWARD_COMMAND = '__auto-forward'
const POLL_MS = 2000
/** Ports below this need root to bind on the host: never forwarded automatically. */
const FIRST_AUTO_PORT = 1024

export function autoForwardFiles(stateDir: string): {pid: string; forwards: string; log: string} {
  return {
    pid: join(stateDir, 'auto-forward.pid'),
    forwards: join(stateDir, 'auto-forwards.json'),
    log: join(stateDir, 'auto-forward.log'),
  }
}

/** The forwards the watcher added this boot (none when there is no watcher). */
export async function readAutoForwards(stateDir: string): Promise<ForwardedPort[]> {
  try {
    return JSON.parse(await readFile(autoForwardFiles(stateDir).forwards, 'utf8')) as ForwardedPort[]
  } catch {
    return []
  }
}

/** The ports box-agent's `tcp-listeners` answer names ("22 8000"). */
export function parseListeners(answer: string): number[] {
  return answer
    .split(' ')
    .filter((word) => /^\d{1,5}$/.test(word))
    .map(Number)
    .filter((port) => port >= 1 && port <= 65_535)
}

/** Guest ports the watcher should forward now: new, not privileged, not ssh's nor the Boxfile's. */
export function portsToForward(
  listening: readonly number[],
  configured: readonly ForwardedPort[],
  added: readonly ForwardedPort[],
): number[] {
  const left = new Set([22, ...configured.filter((f) => f.protocol === 'tcp').map((f) => f.guest)])
  return listening.filter(
    (port) => port >= FIRST_AUTO_PORT && !left.has(port) && !added.some((forward) => forward.guest === port),
  )
}

/** Start the machine's watcher (after any previous one is stopped and its list cleared: a new boot has none of its forwards). */
export async function startAutoForward(stateDir: string, provider: string): Promise<void> {
  await stopAutoForward(stateDir)
  const child = spawn(
    process.execPath,
    [join(PROJECT_ROOT, 'bin', 'run.js'), AUTO_FORWARD_COMMAND, stateDir, provider],
    {
      detached: true,
      cleanup: false,
      stdio: 'ignore',
      reject: false,
    },
  )
  child.unref()
  // Resolves when the watcher ends, long after this command; nothing to wait for.
  void child.catch(() => {})
  if (child.pid !== undefined) await writeFile(autoForwardFiles(stateDir).pid, `${child.pid}\n`)
}

/** Stop the machine's watcher, if one runs (halt, destroy, the next up); its list goes with it. */
export async function stopAutoForward(stateDir: string): Promise<void> {
  const files = autoForwardFiles(stateDir)
  const pid = Number((await readFile(files.pid, 'utf8').catch(() => '')).trim())
  // Only our own watcher: a pid from an old file may belong to another process by now.
  if (pid > 0 && (await isWatcher(pid, stateDir))) {
    try {
      process.kill(pid, 'SIGTERM')
    } catch {}
  }
  await rm(files.pid, {force: true})
  await rm(files.forwards, {force: true})
}

async function isWatcher(pid: number, stateDir: string): Promise<boolean> {
  const words = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0')
  return words.includes(AUTO_FORWARD_COMMAND) && words.includes(stateDir)
}

/** The watcher's loop (the detached process): until the machine stops or its agent cannot tell. */
export async function watchListeningPorts(stateDir: string, providerName: string): Promise<void> {
  const provider = providerFor(providerName, defaultCacheDir())
  const files = autoForwardFiles(stateDir)
  let last: string | undefined
  // The same problem every round (an agent that cannot tell) is written once.
  const log = async (line: string) => {
    if (line === last) return
    last = line
    await writeFile(files.log, `${new Date().toISOString()} ${line}\n`, {flag: 'a'}).catch(() => {})
  }
  const {askAgent, addForward} = provider
  if (!askAgent || !addForward) {
    await log(`provider ${providerName} cannot add forwards to a running machine`)
    return
  }
  const live = {askAgent: askAgent.bind(provider), addForward: addForward.bind(provider)}
  await log('watching')
  const added = await readAutoForwards(stateDir)
  while ((await provider.state({stateDir}).catch(() => 'running')) === 'running') {
    await forwardNewPorts(stateDir, live, added, log).catch((error: Error) => log(`error: ${error.message}`))
    await sleep(POLL_MS)
  }
  await log('machine stopped')
  await rm(files.pid, {force: true})
}

/** One round: ask which ports listen, forward the new ones, write the list. */
async function forwardNewPorts(
  stateDir: string,
  provider: Required<Pick<Provider, 'askAgent' | 'addForward'>>,
  added: ForwardedPort[],
  log: (line: string) => Promise<void>,
): Promise<void> {
  const files = autoForwardFiles(stateDir)
  let listening: number[]
  try {
    listening = parseListeners(await provider.askAgent({stateDir}, 'tcp-listeners', {timeoutMs: 5000}))
  } catch (error) {
    await log(`the guest agent did not tell: ${(error as Error).message}`)
    return
  }
  const record = await readRecord(stateDir)
  const configured = record?.forwardedPorts ?? []
  for (const guest of portsToForward(listening, configured, added)) {
    const used = new Set([record?.sshPort, ...configured.map((f) => f.host), ...added.map((f) => f.host)])
    const host = !used.has(guest) && (await isPortFree(guest)) ? guest : await freePort()
    const forward: ForwardedPort = {guest, host, hostIp: '127.0.0.1', protocol: 'tcp'}
    try {
      await provider.addForward({stateDir}, forward)
    } catch (error) {
      // The port was taken meanwhile, or QEMU is going away: the next round tries again.
      await log(`guest port ${guest}: ${(error as Error).message}`)
      continue
    }
    added.push(forward)
    await log(`guest port ${guest} forwarded from 127.0.0.1:${host}`)
    const temporary = `${files.forwards}.tmp`
    await writeFile(temporary, JSON.stringify(added))
    await rename(temporary, files.forwards)
  }
}
