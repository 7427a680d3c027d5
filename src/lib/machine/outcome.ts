import {providerFor} from '../../providers/index.js'
import type {MachineState} from '../../providers/provider.js'
import type {ResolvedMachine} from '../boxfile/types.js'
import {machineDir, type MachineContext} from './context.js'

/** What a machine command did to one machine, as its `--json` reports it. */
export interface MachineOutcome {
  name: string
  /** What happened: "halted", "destroyed", "provisioned", "kept", … */
  outcome: string
  /** The machine's state afterwards. */
  state: MachineState
}

/** The outcome of `outcome`, with the machine's state as its provider sees it now. */
export async function machineOutcome<T extends object = object>(
  context: Pick<MachineContext, 'projectDir' | 'cacheDir'>,
  machine: ResolvedMachine,
  outcome: string,
  extra?: T,
): Promise<MachineOutcome & T> {
  const state = await providerFor(machine.provider, context.cacheDir).state({
    stateDir: machineDir(context.projectDir, machine.name),
  })
  return {name: machine.name, outcome, state, ...(extra as T)}
}
