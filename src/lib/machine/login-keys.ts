/**
 * The keys a machine is first reached with, and their replacement by its own key.
 *
 * A box built by box trusts box's documented insecure key (static/insecure_key); a box
 * from the Vagrant world trusts Vagrant's published insecure pair (static/vagrant/, its
 * RSA and ed25519 halves). A new machine offers them all in one connection, the likely
 * one first, then removes them from the login user's authorized keys and adds the
 * machine's own key, as Vagrant does: later boots use the machine key only. A Boxfile
 * `ssh.private_key_path` names a key the box already trusts; box then uses that key
 * on every boot and changes nothing in the guest (Vagrant inserts a key only when it
 * logged in with the insecure one).
 */
import {readFile, rm} from 'node:fs/promises'
import {join} from 'node:path'

import {PROJECT_ROOT} from '../core/paths.js'
import {installPrivateKey, sshRun, type SshTarget} from './ssh.js'

export const BOX_INSECURE_KEY = join(PROJECT_ROOT, 'static', 'insecure_key')
export const VAGRANT_INSECURE_KEYS = [
  join(PROJECT_ROOT, 'static', 'vagrant', 'insecure_key.ed25519'),
  join(PROJECT_ROOT, 'static', 'vagrant', 'insecure_key.rsa'),
]

/** The insecure private keys to offer, the box's own convention first (box-built boxes carry box's metadata). */
export function insecureKeysFor(builtByBox: boolean): string[] {
  return builtByBox ? [BOX_INSECURE_KEY, ...VAGRANT_INSECURE_KEYS] : [...VAGRANT_INSECURE_KEYS, BOX_INSECURE_KEY]
}

/** The key blobs (second field) of the insecure public keys: what identifies them in an authorized_keys line. */
export async function insecureKeyBlobs(): Promise<string[]> {
  const blobs: string[] = []
  for (const key of [BOX_INSECURE_KEY, ...VAGRANT_INSECURE_KEYS]) {
    const blob = (await readFile(`${key}.pub`, 'utf8')).trim().split(/\s+/)[1]
    if (blob) blobs.push(blob)
  }
  return blobs
}

/**
 * Copies (mode 0600, as OpenSSH wants; git keeps no modes) of the keys to offer, in
 * `stateDir`, and a function that removes them again.
 */
export async function stageInsecureKeys(
  stateDir: string,
  boxDir: string,
): Promise<{keyFiles: string[]; remove: () => Promise<void>}> {
  const metadata = JSON.parse(await readFile(join(boxDir, 'metadata.json'), 'utf8').catch(() => '{}')) as {
    box?: unknown
  }
  const sources = insecureKeysFor(metadata.box !== undefined)
  const keyFiles: string[] = []
  for (const [index, source] of sources.entries())
    keyFiles.push(await installPrivateKey(source, join(stateDir, `insecure_key.${index}`)))
  return {
    keyFiles,
    remove: async () => Promise.all(keyFiles.map((file) => rm(file, {force: true}))).then(() => undefined),
  }
}

/**
 * In the guest, as root: drop every insecure key from `user`'s authorized keys and add
 * the machine's (stdin). Boxes built by box read authorized keys from /persistent (so the
 * key survives every resnap); others from ~/.ssh/authorized_keys on the root filesystem.
 * The file is written next to itself and renamed, so sshd never reads half of it.
 * Prints the file's path.
 */
const REPLACE_SCRIPT = `set -eu
user="$1"; shift
if sshd -T 2>/dev/null | grep -qi '^authorizedkeysfile .*/persistent/ssh/authorized_keys'; then
  file=/persistent/ssh/authorized_keys/$user
  mkdir -p "$(dirname "$file")"
else
  home=$(getent passwd "$user" | cut -d: -f6)
  file=$home/.ssh/authorized_keys
  if [ ! -d "$home/.ssh" ]; then install -d -m 0700 -o "$user" "$home/.ssh"; fi
fi
machine_key=$(cat)
{
  if [ -f "$file" ]; then
    for blob in "$@"; do printf '%s\\n' "$blob"; done > "$file.insecure"
    grep -v -F -f "$file.insecure" "$file" || true
    rm -f "$file.insecure"
  fi
  printf '%s\\n' "$machine_key"
} > "$file.new"
chown "$user" "$file.new"
chmod 0600 "$file.new"
mv "$file.new" "$file"
echo "$file"
`

/** Replace the insecure keys by the machine's key; resolves to the guest file that holds it. */
export async function replaceInsecureKeys(target: SshTarget, user: string, machinePublicKey: string): Promise<string> {
  const blobs = await insecureKeyBlobs()
  const {stdout} = await sshRun(target, ['sudo', 'sh', '-c', REPLACE_SCRIPT, 'sh', user, ...blobs], {
    input: machinePublicKey.trim(),
    purpose: 'replacing the insecure ssh keys by the machine key',
  })
  return stdout.trim()
}
