import {Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {runDoctor, type DoctorReport} from '../lib/host/doctor.js'

export default class Doctor extends BaseCommand<typeof Doctor> {
  static summary = 'Check the host tools box needs and the acceleration machines will use.'
  static description = `Each tool is reported found (with its version) or missing (with the Debian/Ubuntu package that provides it).
The accelerator is probed with a tiny guest (KVM, or HVF on macOS, then TCG) and cached per host; BOX_ACCEL=tcg|kvm|hvf overrides it.
Exits non-zero when a required tool is missing or no accelerator works (with --jobs, also the tools jobs need): a Slurm HealthCheckProgram can drain a node on it (docs/fleet.md).`
  static enableJsonFlag = true
  static flags = {
    reprobe: Flags.boolean({description: 'Probe the accelerator again instead of using the cached result.'}),
    jobs: Flags.boolean({
      description: 'Also require what box run and box batch need on a worker node (mke2fs, debugfs).',
    }),
  }

  async run(): Promise<DoctorReport> {
    const report = await runDoctor({
      cacheDir: this.config.cacheDir,
      refreshAccel: this.flags.reprobe,
      jobs: this.flags.jobs,
    })
    if (!this.jsonEnabled()) this.printReport(report)
    if (!report.ok) process.exitCode = 1
    return report
  }

  private printReport(report: DoctorReport): void {
    const width = Math.max(...report.tools.map((tool) => tool.command.length))
    for (const tool of report.tools) {
      const name = tool.command.padEnd(width)
      if (tool.found) this.log(`  ok       ${name}  ${tool.version ?? ''}`)
      else
        this.log(
          `  ${tool.required ? 'MISSING' : 'missing'}  ${name}  install: sudo apt-get install ${tool.package}  (${tool.purpose}${tool.required ? '' : ', optional'})`,
        )
    }
    if (report.accel) {
      const tried = report.accel.attempts.filter((a) => !a.ok).map((a) => `${a.accel}: ${a.reason}`)
      this.log(
        `\nacceleration: ${report.accel.accel} (${report.accel.source === 'env' ? 'BOX_ACCEL' : report.accel.source})${tried.length > 0 ? `; not usable: ${tried.join('; ')}` : ''}`,
      )
    } else {
      this.log(`\nacceleration: none (${report.accelError})`)
    }
    this.log(
      report.ok ? '\nbox is ready to run machines.' : '\nbox cannot run machines until the problems above are fixed.',
    )
  }
}
