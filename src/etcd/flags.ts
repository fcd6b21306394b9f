// The etcd connection flags, shared by flanneld and flannelctl (each also read from FLANNELD_*):
// declared once as data; flanneld parses them with src/common/flag-table.ts, flannelctl with yargs.
import type { Argv } from 'yargs';
import { lastString } from '../common/cli.js';
import type { FlagSpec } from '../common/flag-table.js';
import type { EtcdConnectionOptions } from './connection.js';

export const ETCD_FLAGS = {
  'etcd-endpoints': { type: 'string', default: 'http://127.0.0.1:4001,http://127.0.0.1:2379', describe: 'comma-separated etcd client URLs' },
  'etcd-prefix': { type: 'string', default: '/coreos.com/network', describe: 'etcd key prefix of the network' },
  'etcd-cafile': { type: 'string', describe: 'CA certificate for TLS to etcd' },
  'etcd-certfile': { type: 'string', describe: 'client certificate for TLS to etcd' },
  'etcd-keyfile': { type: 'string', describe: 'client key for TLS to etcd' },
  'etcd-username': { type: 'string', describe: 'etcd user name' },
  'etcd-password': { type: 'string', describe: 'etcd password' },
} as const satisfies Record<string, FlagSpec>;

/** The etcd flags on a yargs parser (flannelctl). */
export function withEtcdFlags<T>(y: Argv<T>) {
  const f = ETCD_FLAGS;
  const str = { type: 'string', coerce: lastString } as const;
  return y
    .option('etcd-endpoints', { ...str, default: f['etcd-endpoints'].default, describe: f['etcd-endpoints'].describe })
    .option('etcd-prefix', { ...str, default: f['etcd-prefix'].default, describe: f['etcd-prefix'].describe })
    .option('etcd-cafile', { ...str, describe: f['etcd-cafile'].describe })
    .option('etcd-certfile', { ...str, describe: f['etcd-certfile'].describe })
    .option('etcd-keyfile', { ...str, describe: f['etcd-keyfile'].describe })
    .option('etcd-username', { ...str, describe: f['etcd-username'].describe })
    .option('etcd-password', { ...str, describe: f['etcd-password'].describe });
}

export function etcdOptionsFrom(argv: {
  etcdEndpoints: string;
  etcdPrefix: string;
  etcdCafile?: string | undefined;
  etcdCertfile?: string | undefined;
  etcdKeyfile?: string | undefined;
  etcdUsername?: string | undefined;
  etcdPassword?: string | undefined;
}): EtcdConnectionOptions {
  return {
    endpoints: argv.etcdEndpoints.split(',').map((e) => e.trim()).filter((e) => e !== ''),
    prefix: argv.etcdPrefix,
    ...(argv.etcdCafile ? { caFile: argv.etcdCafile } : {}),
    ...(argv.etcdCertfile ? { certFile: argv.etcdCertfile } : {}),
    ...(argv.etcdKeyfile ? { keyFile: argv.etcdKeyfile } : {}),
    ...(argv.etcdUsername ? { username: argv.etcdUsername } : {}),
    ...(argv.etcdPassword ? { password: argv.etcdPassword } : {}),
  };
}
