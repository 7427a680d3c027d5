import {mkdir, readFile, writeFile} from 'node:fs/promises'
import {join} from 'node:path'

import {execa} from 'execa'

/**
 * A certificate authority and server certificates made with the real openssl CLI, for
 * HTTPS tests against a loopback server: a CA, and certificates it signs for given names,
 * valid now or within given dates (an expired one).
 */

export interface TestCa {
  dir: string
  /** The CA certificate (PEM), to trust with --ca-cert or NODE_EXTRA_CA_CERTS. */
  certFile: string
  keyFile: string
  /** A certificate signed by this CA. */
  issue(name: string, options: IssueOptions): Promise<{key: string; cert: string}>
}

export interface IssueOptions {
  /** subjectAltName entries: "DNS:localhost", "IP:127.0.0.1". */
  altNames: string[]
  /** openssl's YYYYMMDDHHMMSSZ; default: from now for a day. */
  startDate?: string
  endDate?: string
}

const openssl = (args: string[], cwd: string) => execa('openssl', args, {cwd, stdin: 'ignore'})

export async function makeTestCa(dir: string, commonName = 'box test CA'): Promise<TestCa> {
  await mkdir(join(dir, 'newcerts'), {recursive: true})
  await writeFile(join(dir, 'index.txt'), '')
  await writeFile(join(dir, 'serial'), '1000\n')
  const config = join(dir, 'openssl.cnf')
  await writeFile(
    config,
    [
      '[req]',
      'distinguished_name = dn',
      'prompt = no',
      '[dn]',
      `CN = ${commonName}`,
      '[v3_ca]',
      'basicConstraints = critical, CA:TRUE',
      'keyUsage = critical, keyCertSign, cRLSign',
      'subjectKeyIdentifier = hash',
      '[ca]',
      'default_ca = test_ca',
      '[test_ca]',
      `database = ${join(dir, 'index.txt')}`,
      `new_certs_dir = ${join(dir, 'newcerts')}`,
      `serial = ${join(dir, 'serial')}`,
      'default_md = sha256',
      'default_days = 1',
      'policy = any_name',
      'unique_subject = no',
      '[any_name]',
      'commonName = supplied',
      '',
    ].join('\n'),
  )
  const certFile = join(dir, 'ca.pem')
  const keyFile = join(dir, 'ca.key')
  await openssl(
    [
      'req',
      '-x509',
      '-new',
      '-config',
      config,
      '-extensions',
      'v3_ca',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      keyFile,
      '-out',
      certFile,
      '-days',
      '2',
    ],
    dir,
  )
  // `openssl ca` rewrites its serial file and database by renaming: two at once lose a rename.
  let signing: Promise<unknown> = Promise.resolve()
  return {
    dir,
    certFile,
    keyFile,
    async issue(name, options) {
      const key = join(dir, `${name}.key`)
      const csr = join(dir, `${name}.csr`)
      const cert = join(dir, `${name}.pem`)
      const extensions = join(dir, `${name}.ext.cnf`)
      await writeFile(
        extensions,
        [
          '[server]',
          'basicConstraints = CA:FALSE',
          'keyUsage = critical, digitalSignature',
          'extendedKeyUsage = serverAuth',
          `subjectAltName = ${options.altNames.join(', ')}`,
          '',
        ].join('\n'),
      )
      await openssl(
        [
          'req',
          '-new',
          '-newkey',
          'ec',
          '-pkeyopt',
          'ec_paramgen_curve:prime256v1',
          '-nodes',
          '-keyout',
          key,
          '-out',
          csr,
          '-subj',
          `/CN=${name}`,
        ],
        dir,
      )
      const dates = [
        ...(options.startDate ? ['-startdate', options.startDate] : []),
        ...(options.endDate ? ['-enddate', options.endDate] : []),
      ]
      const signed = signing.then(() =>
        openssl(
          [
            'ca',
            '-batch',
            '-notext',
            '-config',
            config,
            '-cert',
            certFile,
            '-keyfile',
            keyFile,
            '-in',
            csr,
            '-out',
            cert,
            '-extfile',
            extensions,
            '-extensions',
            'server',
            ...dates,
          ],
          dir,
        ),
      )
      signing = signed.catch(() => undefined)
      await signed
      return {key: await readFile(key, 'utf8'), cert: await readFile(cert, 'utf8')}
    },
  }
}
