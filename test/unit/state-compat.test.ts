import {describe, expect, it} from 'vitest'

import {BoxError} from '../../src/lib/core/errors.js'
import type {QemuLaunchSpec} from '../../src/providers/qemu/argv.js'
import {
  compatProblems,
  devicesFingerprint,
  incompatibleStateError,
  parseStateCompat,
  STATE_FORMAT,
  type CompatTarget,
  type StateCompat,
} from '../../src/providers/qemu/state-compat.js'

const spec: QemuLaunchSpec = {
  name: 'web',
  accel: 'tcg',
  cpus: 2,
  memoryMiB: 1024,
  disk: '/p/.box/machines/web/disk.qcow2',
  forwards: [
    {guest: 22, host: 2222, hostIp: '127.0.0.1', protocol: 'tcp'},
    {guest: 80, host: 8080, hostIp: '127.0.0.1', protocol: 'tcp'},
  ],
  qmpSocket: '/p/qmp.sock',
  serialLog: '/p/serial.log',
  pidFile: '/p/qemu.pid',
  agentFifo: '/p/agent',
  directBoot: {kernel: '/store/vmlinuz', append: 'root=/dev/mapper/box-root_snap ro resnap'},
}

const box = {dir: '/store/reference/1.0/qemu', version: '1.0', recipeHash: 'abc', imageBytes: 1000, imageMtimeMs: 5}

const saved: StateCompat = {
  format: STATE_FORMAT,
  qemuVersion: '7.2.22',
  machineType: 'pc-i440fx-7.2',
  accel: 'tcg',
  cpus: 2,
  memoryMiB: 1024,
  devices: devicesFingerprint(spec),
  box,
  launch: {
    choice: {resnap: true},
    firmwareBoot: false,
    agent: true,
    restrictNetwork: false,
    guestForwards: [{guest: 80, protocol: 'tcp'}],
  },
  diskVirtualSize: 8 << 30,
  state: {bytes: 170_000_000, sha256: 'f'.repeat(64)},
  savedAt: '2026-12-01T00:00:00.000Z',
}

const target: CompatTarget = {
  qemuVersion: '7.2.22',
  machineType: 'pc-i440fx-7.2',
  accel: 'tcg',
  cpus: 2,
  memoryMiB: 1024,
  devices: saved.devices,
  box,
}

describe('the devices fingerprint of a saved state', () => {
  it('ignores what differs between two starts of one machine: paths, host ports, name, daemonizing, -incoming', () => {
    const elsewhere = {
      ...spec,
      name: 'worker-1',
      disk: '/cache/workers/w1/disk.qcow2',
      qmpSocket: '/tmp/box-1-qmp.sock',
      serialLog: '/cache/workers/w1/serial.log',
      pidFile: '/cache/workers/w1/qemu.pid',
      agentFifo: '/cache/workers/w1/agent',
      forwards: spec.forwards.map((forward) => ({...forward, host: forward.host + 1000})),
      daemonize: true,
      incoming: true,
    }
    expect(devicesFingerprint(elsewhere)).toBe(devicesFingerprint(spec))
  })

  it('changes with what the guest sees: cpus, memory, a forwarded guest port, the agent port, the network, the kernel line', () => {
    const variants: QemuLaunchSpec[] = [
      {...spec, cpus: 1},
      {...spec, memoryMiB: 2048},
      {...spec, forwards: [spec.forwards[0]!, {...spec.forwards[1]!, guest: 81}]},
      {...spec, agentFifo: undefined},
      {...spec, restrictNetwork: true},
      {...spec, directBoot: {...spec.directBoot!, append: 'root=/dev/mapper/box-root ro'}},
    ]
    const prints = new Set(variants.map(devicesFingerprint))
    expect(prints.size).toBe(variants.length)
    expect(prints.has(devicesFingerprint(spec))).toBe(false)
  })

  it("a job worker's disks: each start's own files fit, another serial, mode, count or the NIC do not", () => {
    const job: QemuLaunchSpec = {
      ...spec,
      noNetwork: true,
      drives: [
        {file: '/cache/ready/slot-0.img', serial: 'box-job-in', readOnly: true},
        {file: '/cache/ready/slot-1.img', serial: 'box-job-out'},
      ],
    }
    const otherFiles = {
      ...job,
      drives: [
        {file: '/cache/jobs/a/in.img', serial: 'box-job-in', readOnly: true},
        {file: '/cache/jobs/a/out.img', serial: 'box-job-out'},
      ],
    }
    expect(devicesFingerprint(otherFiles)).toBe(devicesFingerprint(job))
    const variants: QemuLaunchSpec[] = [
      {...job, noNetwork: false},
      {...job, drives: [job.drives![0]!, {...job.drives![1]!, serial: 'other'}]},
      {...job, drives: [{...job.drives![0]!, readOnly: false}, job.drives![1]!]},
      {...job, drives: [job.drives![0]!]},
    ]
    const prints = new Set([job, ...variants].map(devicesFingerprint))
    expect(prints.size).toBe(variants.length + 1)
  })
})

describe('the compatibility check before a restore', () => {
  it('accepts the machine the state was saved from', () => {
    expect(compatProblems(saved, target)).toEqual([])
  })

  it('refuses another QEMU version, machine type or accelerator, naming both sides', () => {
    expect(compatProblems(saved, {...target, qemuVersion: '8.0.0'})).toEqual([
      'it was saved by QEMU 7.2.22, this is QEMU 8.0.0',
    ])
    expect(compatProblems(saved, {...target, machineType: 'pc-i440fx-8.0'})).toEqual([
      'it was saved on machine type pc-i440fx-7.2, QEMU now builds pc-i440fx-8.0',
    ])
    expect(compatProblems(saved, {...target, accel: 'kvm'})).toEqual([
      'it was saved under tcg, this host runs guests under kvm',
    ])
  })

  it("refuses a Boxfile that changed cpus or memory, in the Boxfile's words", () => {
    expect(compatProblems(saved, {...target, memoryMiB: 2048})).toEqual([
      'it was saved with memory: 1024 (MiB), the Boxfile now says memory: 2048',
    ])
    expect(compatProblems(saved, {...target, cpus: 4})).toEqual([
      'it was saved with cpus: 2, the Boxfile now says cpus: 4',
    ])
  })

  it('refuses another box image, or the same one changed', () => {
    expect(compatProblems(saved, {...target, box: {...box, imageMtimeMs: 6}})).toHaveLength(1)
    expect(
      compatProblems(saved, {...target, box: {...box, dir: '/store/reference/2.0/qemu', version: '2.0'}})[0],
    ).toMatch(/box image in \/store\/reference\/1\.0\/qemu \(version 1\.0\)/)
  })

  it('reports changed devices only when nothing above explains the difference', () => {
    expect(compatProblems(saved, {...target, devices: 'other'})).toEqual([expect.stringMatching(/devices changed/)])
    expect(compatProblems(saved, {...target, devices: 'other', memoryMiB: 512})).toHaveLength(1)
  })

  it('refuses a record of a newer format', () => {
    expect(compatProblems({...saved, format: STATE_FORMAT + 1}, target)[0]).toMatch(/format 2/)
  })

  it('turns the problems into one BoxError naming the snapshot', () => {
    const error = incompatibleStateError('snapshot "a" of machine web', ['x', 'y'])
    expect(error).toBeInstanceOf(BoxError)
    expect(error.message).toBe('snapshot "a" of machine web cannot be resumed: x; y')
  })
})

describe('reading a compatibility record', () => {
  it('round-trips a record', () => {
    expect(parseStateCompat(JSON.stringify(saved), 'x.json')).toEqual(saved)
  })

  it('refuses text that is not JSON, or lacks what a restore needs', () => {
    expect(() => parseStateCompat('{', 'x.json')).toThrow(/x\.json is not JSON/)
    const {state: _state, ...withoutState} = saved
    expect(() => parseStateCompat(JSON.stringify(withoutState), 'x.json')).toThrow(/lacks fields/)
    expect(() => parseStateCompat('null', 'x.json')).toThrow(/lacks fields/)
  })
})
