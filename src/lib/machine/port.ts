/** `box port`: the forwards in force on a running machine, as its record keeps them from the last boot. */
import {providerFor} from '../../providers/index.js'
import type {ResolvedMachine} from '../boxfile/types.js'
import {BoxError, BugError, ExitCode} from '../core/errors.js'
import type {ForwardedPort} from '../core/ports.js'
import {readAutoForwards} from './auto-forward.js'
import {machineDir, readRecord, type MachineContext} from './context.js'

export interface PortForward extends ForwardedPort {
  /** The forward box itself makes for ssh (not in the Boxfile). */
  ssh?: true
  /** Added while the machine runs, for a port that started listening in the guest (forward_ports: auto). */
  auto?: true
}

/** The one machine a command that takes a single [NAME] acts on; a usage error naming them when the Boxfile has several. */
export function oneMachine(machines: readonly ResolvedMachine[], command: string): ResolvedMachine {
  // A Boxfile resolves to at least one machine (one named default without machines:).
  if (machines.length === 0) throw new BugError(`box ${command} got no machine`)
  if (machines.length !== 1) {
    throw new BoxError(`box ${command} needs one machine; this Boxfile has ${machines.map((m) => m.name).join(', ')}`, {
      exitCode: ExitCode.USAGE,
      suggestions: [`name one: box ${command} ${machines[0]!.name}`],
    })
  }
  return machines[0]!
}

/** ssh's forward first, then the Boxfile's, then those forward_ports: auto added; as the provider set them up at the last boot (host ports may have moved off taken ones). */
export async function machineForwards(
  context: Pick<MachineContext, 'projectDir' | 'cacheDir'>,
  machine: ResolvedMachine,
): Promise<PortForward[]> {
  const stateDir = machineDir(context.projectDir, machine.name)
  const record = await readRecord(stateDir)
  const provider = providerFor(machine.provider, context.cacheDir)
  if (!record?.sshPort || (await provider.state({stateDir})) !== 'running') {
    throw new BoxError(`machine ${machine.name} is not running, so no port is forwarded to it`, {
      suggestions: [`start it: box up ${machine.name}`],
    })
  }
  return [
    {guest: 22, host: record.sshPort, hostIp: '127.0.0.1', protocol: 'tcp', ssh: true},
    ...(record.forwardedPorts ?? []),
    ...(await readAutoForwards(stateDir)).map((forward) => ({...forward, auto: true as const})),
  ]
}

/** The forward of guest port `guest` (TCP before UDP); a clear error listing the forwarded ones when there is none. */
export function forwardOf(forwards: readonly PortForward[], guest: number, machine: string): PortForward {
  const found =
    forwards.find((f) => f.guest === guest && f.protocol === 'tcp') ?? forwards.find((f) => f.guest === guest)
  if (!found) {
    const known = [...new Set(forwards.map((f) => `${f.guest}/${f.protocol}`))].join(', ')
    throw new BoxError(`guest port ${guest} of machine ${machine} is not forwarded; forwarded guest ports: ${known}`, {
      suggestions: ['forward it under forwarded_ports in the Boxfile, then: box reload'],
    })
  }
  return found
}

export function formatForward(forward: PortForward): string {
  const note = forward.ssh ? ' (ssh)' : forward.auto ? ' (auto)' : ''
  return `${forward.hostIp}:${forward.host} → ${forward.guest}/${forward.protocol}${note}`
}
