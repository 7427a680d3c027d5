import {providerFor} from '../../providers/index.js'
import type {ResolvedMachine} from '../boxfile/types.js'
import {machineDir, type MachineContext} from './context.js'
import {closeSshMaster} from './keys.js'
import {stopAutoForward} from './auto-forward.js'

/** Power a machine off: ACPI first, forced after the timeout (or at once with force). */
export async function haltMachine(
  context: Pick<MachineContext, 'projectDir' | 'cacheDir'>,
  machine: ResolvedMachine,
  options: {force?: boolean; timeoutMs?: number} = {},
): Promise<'acpi' | 'forced' | 'not-running'> {
  const stateDir = machineDir(context.projectDir, machine.name)
  const provider = providerFor(machine.provider, context.cacheDir)
  await closeSshMaster(provider.sshControlPath({stateDir}))
  await stopAutoForward(stateDir)
  return provider.halt({stateDir}, {force: options.force, timeoutMs: options.timeoutMs ?? 30_000})
}
