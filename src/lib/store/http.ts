import {readFile} from 'node:fs/promises'
import {resolve} from 'node:path'

import type {Got, OptionsInit} from 'got'

import {BoxError, ExitCode} from '../core/errors.js'

/**
 * What every HTTP(S) request of the store (catalogs and .box downloads) shares: got,
 * loaded only when a request is made (a local `box add` never pays for it), its
 * redirect cap, timeouts, the CA certificates to trust, and the errors a user can act on
 * (TLS, redirects) told apart from the ones worth a retry.
 */

export interface HttpOptions {
  /** Connect, wait-for-headers and idle (no bytes) timeout, per attempt. Default 30 s. */
  timeoutMs?: number
  /**
   * A PEM file of CA certificates to trust as well (`--ca-cert`, Boxfile
   * `box_download_ca_cert`): added to Node's bundled CAs and NODE_EXTRA_CA_CERTS, not instead
   * of them, so a mirror signed by a local CA may still redirect to a public CDN.
   */
  caCertFile?: string
}

/** Redirects followed per request (curl's and Vagrant's default cap is far higher; boxes hop through a CDN once or twice). */
export const MAX_REDIRECTS = 10
const DEFAULT_TIMEOUT_MS = 30_000

/** got itself, imported at the first request. */
export async function loadGot(): Promise<Got> {
  return (await import('got')).default
}

/** The got options every request takes: timeouts, the redirect cap (got follows 301/302/303/307/308), the CAs. */
export async function requestOptions(
  options: HttpOptions,
): Promise<Pick<OptionsInit, 'followRedirect' | 'maxRedirects' | 'throwHttpErrors' | 'retry' | 'timeout' | 'https'>> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS
  return {
    followRedirect: true,
    maxRedirects: MAX_REDIRECTS,
    throwHttpErrors: false,
    retry: {limit: 0},
    timeout: {
      lookup: timeoutMs,
      connect: timeoutMs,
      secureConnect: timeoutMs,
      send: timeoutMs,
      response: timeoutMs,
      socket: timeoutMs,
    },
    ...(options.caCertFile ? {https: {certificateAuthority: await trustedCertificates(options.caCertFile)}} : {}),
  }
}

const trusted = new Map<string, Promise<string[]>>()

/** Node's CAs, NODE_EXTRA_CA_CERTS's and the file's: a `ca` option replaces Node's list, so it is rebuilt in full. */
function trustedCertificates(file: string): Promise<string[]> {
  const path = resolve(file)
  const extra = process.env.NODE_EXTRA_CA_CERTS
  const key = `${path}\0${extra ?? ''}`
  let certificates = trusted.get(key)
  if (!certificates) {
    certificates = (async () => {
      const {rootCertificates} = await import('node:tls')
      // Node already warned at start-up if this one is unreadable; it is not ours to refuse.
      const fromEnvironment = extra ? await readFile(extra, 'utf8').catch(() => undefined) : undefined
      return [...rootCertificates, ...(fromEnvironment ? [fromEnvironment] : []), await readCaFile(path, file)]
    })()
    trusted.set(key, certificates)
  }
  return certificates
}

async function readCaFile(path: string, given: string): Promise<string> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (error) {
    throw new BoxError(`cannot read the CA certificate file ${given}: ${(error as Error).message}`, {
      exitCode: ExitCode.USAGE,
      cause: error,
      suggestions: ['give --ca-cert (or box_download_ca_cert) the path of a PEM file holding the CA certificate'],
    })
  }
  if (!text.includes('-----BEGIN CERTIFICATE-----')) {
    throw new BoxError(`${given} holds no PEM certificate (no "-----BEGIN CERTIFICATE-----" line)`, {
      exitCode: ExitCode.USAGE,
      suggestions: ['convert a DER certificate with: openssl x509 -inform der -in CA.der -out CA.pem'],
    })
  }
  return text
}

/** OpenSSL's verdicts on a certificate chain that no trusted CA signed. */
const UNTRUSTED_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
])
const TRUST_HOW =
  'if you trust the CA that signed it, name its PEM file: --ca-cert FILE (box add, update, outdated), box_download_ca_cert in the Boxfile (box up), or NODE_EXTRA_CA_CERTS=FILE'

/**
 * A BoxError for failures retrying cannot fix and the user can: a certificate that is not
 * trusted, is for another host or out of date, and too many redirects (a loop, most
 * likely). Undefined for anything else (the caller decides about retries).
 */
export function permanentHttpFailure(error: unknown, fallbackUrl: string): BoxError | undefined {
  const e = error as NodeJS.ErrnoException & {options?: {url?: URL}; request?: {redirectUrls?: URL[]}}
  const code = e?.code ?? ''
  const url = e?.options?.url?.toString() ?? fallbackUrl
  const host = hostOf(url)
  const reason = e instanceof Error ? e.message : String(e)
  if (code === 'ERR_TOO_MANY_REDIRECTS') {
    const hops = [fallbackUrl, ...(e.request?.redirectUrls ?? []).map(String)]
    const loop = new Set(hops).size < hops.length
    return new BoxError(
      `${loop ? 'redirect loop' : 'too many redirects'} for ${fallbackUrl}: stopped at ${hops.at(-1)} after ${MAX_REDIRECTS} redirects (the cap)`,
      {
        cause: error,
        detail: `redirects:\n${hops.join('\n→ ')}`,
        suggestions: [
          loop
            ? 'the server sends the request back where it came from: tell whoever runs it, or use the final URL of the box if you know it'
            : `use a URL nearer the file (at most ${MAX_REDIRECTS} redirects are followed)`,
        ],
      },
    )
  }
  // got refuses to follow a Location of another scheme (file:, ftp:): no retry changes that.
  const scheme = /^Unsupported protocol: ([a-z][a-z0-9+.-]*:)/i.exec(reason)?.[1]
  if (scheme) {
    return new BoxError(`${url} redirects to a ${scheme} URL: box follows redirects to http: and https: only`, {
      cause: error,
      suggestions: ['download the box another way and give box add its path'],
    })
  }
  if (UNTRUSTED_CODES.has(code)) {
    return new BoxError(`the TLS certificate of ${host} is not signed by a trusted CA (${code})`, {
      cause: error,
      detail: `while fetching ${url}`,
      suggestions: [TRUST_HOW],
    })
  }
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    return new BoxError(`the TLS certificate of ${host} is for another host name`, {
      cause: error,
      detail: `${reason}\nwhile fetching ${url}`,
      suggestions: [
        'use the host name the certificate names in the URL, or have the server given a certificate for this name',
      ],
    })
  }
  if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID') {
    const expired = code === 'CERT_HAS_EXPIRED'
    return new BoxError(`the TLS certificate of ${host} ${expired ? 'has expired' : 'is not valid yet'}`, {
      cause: error,
      detail: `while fetching ${url}`,
      suggestions: [
        expired ? 'the server needs a renewed certificate' : 'the server certificate starts later than now',
        `check this host's clock (date -u says ${new Date().toISOString()})`,
      ],
    })
  }
  if (code.startsWith('ERR_TLS_') || code.startsWith('ERR_SSL_') || /^(CERT_|UNABLE_TO_)/.test(code)) {
    return new BoxError(`TLS connection to ${host} refused: ${reason} (${code})`, {
      cause: error,
      detail: `while fetching ${url}`,
    })
  }
  return undefined
}

function hostOf(url: string): string {
  try {
    return new URL(url).host
  } catch {
    return url
  }
}
