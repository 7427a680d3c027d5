import {rm} from 'node:fs/promises'

import {providerFor} from '../../providers/index.js'
import type {ResolvedMachine} from '../boxfile/types.js'
import {machineDir, readRecord, type MachineContext} from './context.js'
import {closeSshMaster} from './keys.js'
import {stopAutoForward} from './auto-forward.js'

/** Stop a machine, delete its disk and state, and drop it from the machine index; resolves to whether it existed. */
export async function destroyMachine(
  context: Pick<MachineContext, 'projectDir' | 'cacheDir' | 'dataDir'>,
  machine: ResolvedMachine,
): Promise<boolean> {
  const stateDir = machineDir(context.projectDir, machine.name)
  const record = await readRecord(stateDir)
  const provider = providerFor(machine.provider, context.cacheDir)
  await closeSshMaster(provider.sshControlPath({stateDir}))
  await stopAutoForward(stateDir)
  await provider.destroy({stateDir})
  await rm(stateDir, {recursive: true, force: true})
  if (record) {
    const {unregisterMachine} = await import('../store/machine-index.js')
    await unregisterMachine(context.dataDir, record.id)
  }
  return record !== undefined
}
