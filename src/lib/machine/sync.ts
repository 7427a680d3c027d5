import type {ResolvedMachine} from '../boxfile/types.js'
import {BoxError} from '../core/errors.js'
import {run} from '../core/exec.js'
import type {Progress} from '../core/progress.js'
import {shJoin} from '../core/shell-quote.js'
import {sshOptions, sshRun, type SshTarget} from './ssh.js'

/**
 * Synced folders: each enabled folder is copied into the guest with rsync over the
 * machine's ssh connection (a one-way copy, like Vagrant's rsync folders). The
 * destination is made and handed to the login user first, so rsync runs unprivileged.
 */
export async function syncFolders(
  machine: ResolvedMachine,
  target: SshTarget,
  options: {progress: Progress; signal?: AbortSignal},
): Promise<number> {
  const folders = machine.syncedFolders.filter((folder) => !folder.disabled)
  for (const folder of folders) {
    options.signal?.throwIfAborted()
    const stage = options.progress.stage(`${machine.name}: rsync ${folder.source} → ${folder.destination}`)
    try {
      await sshRun(target, ['sudo', '-n', 'install', '-d', '-o', target.user, folder.destination], {
        purpose: `creating ${folder.destination} in the guest`,
      })
      const {stdout} = await run('rsync', rsyncArgs(target, folder), {
        purpose: `rsync of ${folder.source} to ${machine.name}:${folder.destination}`,
        cancelSignal: options.signal,
        suggestions: ['the guest needs rsync installed (boxes built by box have it)'],
      })
      stage.done(summary(stdout))
    } catch (error) {
      stage.fail()
      throw error instanceof BoxError ? error : new BoxError(`rsync to ${machine.name} failed`, {cause: error})
    }
  }
  return folders.length
}

/** rsync's argv: the trailing slash copies the folder's contents; --delete makes the guest side match. */
export function rsyncArgs(
  target: SshTarget,
  folder: {source: string; destination: string; exclude: string[]},
): string[] {
  return [
    '--archive',
    '--compress',
    '--delete',
    '--no-owner',
    '--no-group',
    '--stats',
    ...folder.exclude.map((pattern) => `--exclude=${pattern}`),
    // rsync splits -e on spaces and honours quotes, so each ssh option is quoted.
    '-e',
    shJoin(['ssh', ...sshOptions(target)]),
    `${folder.source.replace(/\/+$/, '')}/`,
    `${target.user}@${target.host}:${folder.destination}`,
  ]
}

function summary(stats: string): string | undefined {
  const files = /Number of regular files transferred: ([\d,]+)/.exec(stats)?.[1]
  return files === undefined ? undefined : `${files} file(s) copied`
}
