/** The machine's own ssh key: installed in the guest on the first boot, and the ssh master connection closed again. */
import {readFile, rm} from 'node:fs/promises'

import {spawn} from '../core/exec.js'
import {writeRecord, type MachineRecord} from './context.js'
import {replaceInsecureKeys, stageInsecureKeys} from './login-keys.js'
import {sshRun, waitForSsh, type SshTarget} from './ssh.js'

/**
 * Wait for sshd. A machine fresh from its box only knows the insecure keys (login-keys.ts):
 * log in with those once and replace them by the machine's own key, used from then on.
 * The insecure login is one connection (a master, closed once the key is in place), and
 * the machine key's first login stays as the master for what follows.
 */
export async function waitForMachineSsh(
  stateDir: string,
  target: SshTarget,
  record: MachineRecord,
  options: Parameters<typeof waitForSsh>[1],
): Promise<MachineRecord> {
  if (record.keyInstalled || record.privateKeyPath) {
    await waitForSsh(target, options)
    return record
  }
  const insecure = await stageInsecureKeys(stateDir, record.box.path)
  let authorizedKeysFile: string
  const bootstrap = {...target, keyFile: insecure.keyFiles[0]!, moreKeyFiles: insecure.keyFiles.slice(1)}
  try {
    await waitForSsh(bootstrap, options)
    authorizedKeysFile = await replaceInsecureKeys(
      bootstrap,
      record.user,
      await readFile(`${target.keyFile}.pub`, 'utf8'),
    )
  } finally {
    if (bootstrap.controlPath) await closeSshMaster(bootstrap.controlPath)
    await insecure.remove()
  }
  await waitForSsh(target, {...options, timeoutMs: 30_000})
  const updated = {...record, keyInstalled: true, authorizedKeysFile}
  await writeRecord(stateDir, updated)
  return updated
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
