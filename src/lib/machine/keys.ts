/** The machine's own ssh key installed in the guest and its host key pinned on the first boot; the ssh master connection closed again. */
import {readFile, rm} from 'node:fs/promises'

import {BoxError, BugError} from '../core/errors.js'
import {spawn} from '../core/exec.js'
import {writeRecord, type MachineRecord} from './context.js'
import {hostKeysFromConsole, readKnownHosts, writeKnownHosts, type HostKey, type HostKeyPin} from './host-keys.js'
import {replaceInsecureKeys, stageInsecureKeys} from './login-keys.js'
import {sshRun, waitForSsh, waitForSshListening, type SshTarget, type WaitForSshOptions} from './ssh.js'

/** Where a machine's host key came from when box pinned it. */
export type HostKeySource = 'pinned' | 'agent' | 'console' | 'first-use'

export interface MachineSshOptions extends WaitForSshOptions {
  /** The guest's host keys as its agent tells them (box-agent's host-keys); undefined when it cannot. */
  agentHostKeys?: () => Promise<HostKey[] | undefined>
}

/**
 * Wait for sshd, pinning the machine's host key first if it has none (the first `up`, or
 * after --reset-host-key). A machine fresh from its box only knows the insecure keys:
 * log in with those once (login-keys.ts: box's and Vagrant's) and replace them by the
 * machine's own key, used from then on; a Boxfile's ssh.private_key_path is used as it is.
 * The insecure login is one connection (a master, closed once the key is in place), and
 * the machine key's first login stays as the master for what follows.
 */
export async function waitForMachineSsh(
  stateDir: string,
  target: SshTarget,
  record: MachineRecord,
  options: MachineSshOptions,
): Promise<{record: MachineRecord; hostKeySource: HostKeySource}> {
  const pin = target.hostKeys
  if (!pin) throw new BugError('a machine ssh target without its host key pin')
  const listening = options.listening ?? (await waitForSshListening(options))
  let hostKeySource: HostKeySource = 'pinned'
  if ((await readKnownHosts(pin)).length === 0) {
    const told = listening ? await options.agentHostKeys?.().catch(() => undefined) : undefined
    if (told && told.length > 0) {
      await writeKnownHosts(pin, told)
      hostKeySource = 'agent'
    } else {
      hostKeySource = 'first-use'
    }
  }
  // The one exception to strict checking: a guest that could not tell its key beforehand is
  // trusted on its first login (ssh records the key it was shown), then held to it. The
  // console, when it printed keys, confirms or refuses that key below.
  const firstUse = hostKeySource === 'first-use'
  const waitOptions = {...options, listening}
  if (record.keyInstalled || record.privateKeyPath) {
    await waitForSsh({...target, firstUse}, waitOptions)
    if (firstUse) hostKeySource = await confirmFirstUse(pin, options.serialLog)
    return {record, hostKeySource}
  }
  const insecure = await stageInsecureKeys(stateDir, record.box.path)
  let authorizedKeysFile: string
  const bootstrap = {...target, keyFile: insecure.keyFiles[0]!, moreKeyFiles: insecure.keyFiles.slice(1), firstUse}
  try {
    await waitForSsh(bootstrap, waitOptions)
    if (firstUse) hostKeySource = await confirmFirstUse(pin, options.serialLog)
    authorizedKeysFile = await replaceInsecureKeys(
      {...bootstrap, firstUse: false},
      record.user,
      await readFile(`${target.keyFile}.pub`, 'utf8'),
    )
  } finally {
    if (bootstrap.controlPath) await closeSshMaster(bootstrap.controlPath)
    await insecure.remove()
  }
  await waitForSsh(target, {...waitOptions, timeoutMs: 30_000})
  const updated = {...record, keyInstalled: true, authorizedKeysFile}
  await writeRecord(stateDir, updated)
  return {record: updated, hostKeySource}
}

/**
 * After a first-use login: the key ssh recorded must be one the console printed, if it
 * printed any (cloud images do); the console's list then becomes the pin. A mismatch is
 * refused and the recorded key forgotten.
 */
async function confirmFirstUse(pin: HostKeyPin, serialLog?: string): Promise<HostKeySource> {
  const seen = await readKnownHosts(pin)
  if (seen.length === 0)
    throw new BoxError(`ssh recorded no host key for machine ${pin.machine} in ${pin.knownHostsFile}`)
  const printed = serialLog ? hostKeysFromConsole(await readFile(serialLog, 'utf8').catch(() => '')) : undefined
  if (!printed) {
    await writeKnownHosts(pin, seen)
    return 'first-use'
  }
  if (!seen.every((key) => printed.some((p) => p.type === key.type && p.blob === key.blob))) {
    await rm(pin.knownHostsFile, {force: true})
    throw new BoxError(
      `the ssh host key of machine ${pin.machine} is not one its console printed at boot; box did not pin it`,
      {
        suggestions: [
          'something other than the machine may be answering on its ssh port',
          `the keys the guest printed are in its serial log: ${serialLog}`,
        ],
      },
    )
  }
  await writeKnownHosts(pin, printed)
  return 'console'
}

/**
 * Replace the authorized keys of `user` by the machine's key. Boxes built by box read
 * authorized keys from /persistent (so the key survives every resnap and the insecure
 * key never comes back); other boxes get it in ~/.ssh/authorized_keys.
 */
export async function installMachineKey(target: SshTarget, user: string, publicKey: string): Promise<string> {
  const script = `set -eu
user="$1"
if sshd -T 2>/dev/null | grep -qi '^authorizedkeysfile .*/persistent/ssh/authorized_keys'; then
  file=/persistent/ssh/authorized_keys/$user
else
  file=$(getent passwd "$user" | cut -d: -f6)/.ssh/authorized_keys
fi
mkdir -p "$(dirname "$file")"
cat > "$file.new"
chown "$user" "$file.new" && chmod 0600 "$file.new"
mv "$file.new" "$file"
echo "$file"
`
  const {stdout} = await sshRun(target, ['sudo', 'sh', '-c', script, 'sh', user], {
    input: publicKey,
    purpose: 'installing the machine ssh key',
  })
  return stdout.trim()
}

/** Close the ssh master connection of a machine (halt, destroy, a finished key install). */
export async function closeSshMaster(controlPath: string): Promise<void> {
  await spawn('ssh', ['-o', `ControlPath=${controlPath}`, '-O', 'exit', 'box-machine'], {
    reject: false,
    stdin: 'ignore',
    timeout: 3000,
  })
  await rm(controlPath, {force: true})
}
