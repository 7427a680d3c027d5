import {Readable} from 'node:stream'
import {execa} from 'execa'
import {describe, expect, it} from 'vitest'

import {collectAnswers, type AnswerSources} from '../../src/cli/secure-answers.js'
import {passwordProblem, renderSecureScript, siteProblem, usernameProblem} from '../../src/lib/machine/secure.js'

const noQuestions = (sources: Partial<AnswerSources>): AnswerSources => ({
  passwordFromStdin: false,
  interactive: false,
  ...sources,
})

describe('box secure answers', () => {
  it('without questions, each missing answer is an error naming its flag', async () => {
    await expect(collectAnswers(noQuestions({}))).rejects.toMatchObject({
      exitCode: 2,
      message: expect.stringContaining('no role'),
      suggestions: [expect.stringContaining('--role')],
    })
    await expect(collectAnswers(noQuestions({role: 'worker'}))).rejects.toMatchObject({
      suggestions: [expect.stringContaining('--site')],
    })
    await expect(collectAnswers(noQuestions({role: 'worker', defaultSite: 'example.org'}))).rejects.toMatchObject({
      suggestions: [expect.stringContaining('--username')],
    })
    await expect(
      collectAnswers(noQuestions({role: 'worker', site: 'example.org', username: 'alice'})),
    ).rejects.toMatchObject({suggestions: [expect.stringContaining('--password-stdin')]})
  })

  it('takes the Boxfile site as default and the password from the first line of stdin', async () => {
    const answers = await collectAnswers(
      noQuestions({
        role: 'director',
        defaultSite: 'example.org',
        username: 'alice',
        passwordFromStdin: true,
        stdin: Readable.from([' pa ss\'"$x \n', 'second line\n']),
      }),
    )
    expect(answers).toEqual({role: 'director', site: 'example.org', username: 'alice', password: ' pa ss\'"$x '})
  })

  it('refuses bad answers with what would be accepted', async () => {
    await expect(collectAnswers(noQuestions({role: 'boss'}))).rejects.toThrow(/--role: must be one of worker, director/)
    await expect(collectAnswers(noQuestions({role: 'worker', site: 'exa mple.org'}))).rejects.toThrow(
      /--site: "exa mple.org" is not a host name/,
    )
    await expect(
      collectAnswers(noQuestions({role: 'worker', site: 'example.org', username: 'al ice'})),
    ).rejects.toThrow(/--username: "al ice" is not a user name/)
    await expect(
      collectAnswers(
        noQuestions({
          role: 'worker',
          site: 'example.org',
          username: 'alice',
          passwordFromStdin: true,
          stdin: Readable.from(['']),
        }),
      ),
    ).rejects.toThrow(/--password-stdin: the password must not be empty/)
    expect(siteProblem('worker-1.example.org')).toBeUndefined()
    expect(usernameProblem('alice@example.org')).toBeUndefined()
    expect(usernameProblem("a'b")).toMatch(/not a user name/)
    expect(passwordProblem('x\ny')).toMatch(/one line/)
  })
})

describe('the secure provisioner', () => {
  for (const role of ['worker', 'director'] as const) {
    it(`renders a valid sh script for a ${role}, with the role's firewall`, async () => {
      const script = await renderSecureScript({name: 'w1', directorPort: 9000}, 'box', {
        role,
        site: 'example.org',
        username: 'alice',
      })
      await execa('sh', ['-n'], {input: script})
      expect(script).toContain(`ROLE=${role}`)
      expect(script).toContain('AllowUsers box')
      expect(script).toContain('ip saddr 10.0.2.2 tcp dport 22 accept')
      if (role === 'director') expect(script).toMatch(/tcp dport 9000 accept comment "director"/)
      else expect(script).not.toContain('9000')
    })
  }
})
