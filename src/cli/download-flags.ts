import {Flags} from '@oclif/core'

/** Flags of every command that downloads boxes or reads catalogs (add, update, outdated): one definition, one meaning. */
export const downloadFlags = {
  'ca-cert': Flags.string({
    helpValue: 'FILE',
    description:
      "A PEM file of CA certificates to trust for HTTPS catalogs and boxes, besides Node's bundled CAs and NODE_EXTRA_CA_CERTS (a mirror signed by a local CA).",
  }),
}
