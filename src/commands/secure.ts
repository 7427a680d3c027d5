import {Flags} from '@oclif/core'

import {runningMachineTarget} from '../lib/machine/ssh-session.js'
import {ROLES, secureMachine, secureStatus, type SecureStatus} from '../lib/machine/secure.js'
import {mayAsk} from '../cli/prompts.js'
import {collectAnswers} from '../cli/secure-answers.js'
import {MachineCommand} from '../cli/machine-command.js'

export default class Secure extends MachineCommand<typeof Secure> {
  static summary = 'Lock a running machine down as a worker or director of a site.'
  static description =
    "Asks: worker or director, site name, user name, password (twice, masked). The answers reach the guest over ssh's standard input and are kept in /persistent/secure (root only). The machine then takes ssh with its key only, drops inbound traffic except ssh from the host (and a director's port), and applies all of it again at every boot, resnap or not. Running it again with other answers replaces the configuration."

  static examples = [
    '<%= config.bin %> secure',
    {
      description: 'Without questions, the password from a password manager:',
      command:
        'pass show example.org/alice | <%= config.bin %> secure --role worker --site example.org --username alice --password-stdin',
    },
    '<%= config.bin %> secure --status --json',
  ]

  static enableJsonFlag = true
  static flags = {
    role: Flags.string({options: [...ROLES], description: "The machine's role (asked if missing)."}),
    site: Flags.string({description: "The site name, a host name such as example.org (default: the Boxfile's site)."}),
    username: Flags.string({description: 'The user name at the site (asked if missing).'}),
    'password-stdin': Flags.boolean({
      description: 'Read the password from the first line of standard input (it is never an argument).',
    }),
    yes: Flags.boolean({char: 'y', description: 'Ask nothing: a missing answer is an error naming its flag.'}),
    status: Flags.boolean({
      description: 'Show role, site, user name and whether the lockdown is in force; change nothing.',
    }),
  }

  async run(): Promise<object[]> {
    const {machines, context} = await this.project()
    // Every machine must be reachable before anyone types a password.
    const targets = await Promise.all(machines.map((machine) => runningMachineTarget(context, machine)))

    if (this.flags.status) {
      const statuses = await Promise.all(machines.map((machine, index) => secureStatus(machine.name, targets[index]!)))
      for (const status of statuses) this.log(describeStatus(status))
      return statuses
    }

    const answers = await collectAnswers({
      role: this.flags.role,
      site: this.flags.site,
      username: this.flags.username,
      passwordFromStdin: this.flags['password-stdin'],
      interactive: mayAsk(this.flags.yes),
      defaultSite: machines[0]?.site,
    })
    const secured = []
    for (const [index, machine] of machines.entries()) {
      await secureMachine(context, machine, targets[index]!, answers)
      this.log(`${machine.name}: secured as ${answers.role} of ${answers.site} (user ${answers.username})`)
      secured.push({machine: machine.name, role: answers.role, site: answers.site, username: answers.username})
    }
    return secured
  }
}

function describeStatus(status: SecureStatus): string {
  if (!status.configured) return `${status.machine}: not secured (box secure ${status.machine})`
  const {lockdown} = status
  const missing = [
    lockdown.firewall ? undefined : 'firewall not loaded',
    lockdown.sshKeyOnly ? undefined : 'sshd accepts more than keys',
    lockdown.reappliedAtBoot ? undefined : '/persistent/runsecure missing',
    lockdown.credentialsPrivate ? undefined : '/persistent/secure readable by others',
  ].filter(Boolean)
  const role = status.role === 'director' ? `director (port ${status.directorPort})` : status.role
  return `${status.machine}: ${role} of ${status.site}, user ${status.username}; lockdown ${status.inForce ? 'in force' : `NOT in force: ${missing.join(', ')}`}`
}
