import {execFile} from 'node:child_process'
import {mkdtemp, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {promisify} from 'node:util'

import {describe, expect, it} from 'vitest'

import {batchScript, parseArrayTasks, sbatchArgs, type TaskPlan} from '../../src/lib/jobs/engines/slurm.js'
import {decodePlan} from '../../src/lib/jobs/engines/slurm-task.js'
import {jobSpec} from '../support/job-box.js'

const hostile = `x'; touch /tmp/owned; echo '$(reboot)\`id\``

function plan(): TaskPlan {
  return {
    version: 1,
    batchId: 'b1',
    jobName: 'box-batch-b1',
    token: 't',
    resultsDir: '/shared/results',
    stateDir: '/shared/results/.box-batch/b1',
    box: {name: 'grader', url: 'https://boxes.example.org/grader.box'},
    setup: [],
    retries: 1,
    jobs: [jobSpec({id: 'alice', command: hostile})],
    sbatch: {cpusPerTask: 1, partition: 'vm', timeLimit: '30'},
    boxCommand: ['/usr/bin/node', '/opt/box dir/bin/run.js'],
  }
}

describe('slurm engine pieces', () => {
  it("reads squeue's array task strings", () => {
    expect(parseArrayTasks('0-5%2')).toEqual([0, 1, 2, 3, 4, 5])
    expect(parseArrayTasks('1,3-4')).toEqual([1, 3, 4])
    expect(parseArrayTasks('0-9:3')).toEqual([0, 3, 6, 9])
    expect(parseArrayTasks('')).toEqual([])
  })

  it('puts the job list in the batch script as data: the shell sees none of the job file', async () => {
    const script = batchScript(plan())
    expect(script).not.toContain('touch')
    expect(script).not.toContain('reboot')
    expect(script).toContain("exec /usr/bin/node '/opt/box dir/bin/run.js' batch task <<'BOX_BATCH_PLAN'")
    // The shell hands the data to the task unchanged: run the script with a stand-in for node that prints its stdin.
    const dir = await mkdtemp(join(tmpdir(), 'box-slurm-unit-'))
    const file = join(dir, 'task.sh')
    await writeFile(file, script.replace("exec /usr/bin/node '/opt/box dir/bin/run.js' batch task", 'exec cat'), {
      mode: 0o700,
    })
    const {stdout} = await promisify(execFile)('sh', [file]).finally(() => rm(dir, {recursive: true, force: true}))
    expect(decodePlan(stdout).jobs[0]!.command).toBe(hostile)
  })

  it('submits an array with its cap, time, partition and the nodes a retry must avoid', () => {
    const args = sbatchArgs(plan(), {array: '0-9%3', scriptFile: '/s/task.sh', attempt: 2, exclude: ['node1', 'node4']})
    expect(args).toEqual([
      '--parsable',
      '--job-name',
      'box-batch-b1',
      '--array',
      '0-9%3',
      '--output',
      '/shared/results/.box-batch/b1/task-%a-%A.out',
      '--chdir',
      '/shared/results/.box-batch/b1',
      '--cpus-per-task',
      '1',
      '--no-requeue',
      '--export',
      'ALL,BOX_BATCH_ATTEMPT=2,BOX_BATCH_EXCLUDE=node1:node4',
      '--partition',
      'vm',
      '--time',
      '30',
      '--exclude',
      'node1,node4',
      '/s/task.sh',
    ])
  })

  it('refuses a job list that is not one box wrote', () => {
    expect(() => decodePlan('not base64 json')).toThrow(/not base64 JSON/)
    expect(() => decodePlan(Buffer.from('{"version":9}').toString('base64'))).toThrow(/not one this box reads/)
  })
})
