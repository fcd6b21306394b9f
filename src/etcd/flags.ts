// The etcd connection flags, shared by flanneld and flannelctl (each also read from FLANNELD_*).
import type { Argv } from 'yargs';
import { lastString } from '../common/cli.js';
import type { EtcdConnectionOptions } from './connection.js';

/** The etcd connection flags, shared by flanneld and flannelctl. */
export function withEtcdFlags<T>(y: Argv<T>) {
  return y
    .option('etcd-endpoints', { type: 'string', default: 'http://127.0.0.1:4001,http://127.0.0.1:2379', coerce: lastString, describe: 'comma-separated etcd client URLs' })
    .option('etcd-prefix', { type: 'string', default: '/coreos.com/network', coerce: lastString, describe: 'etcd key prefix of the network' })
    .option('etcd-cafile', { type: 'string', coerce: lastString, describe: 'CA certificate for TLS to etcd' })
    .option('etcd-certfile', { type: 'string', coerce: lastString, describe: 'client certificate for TLS to etcd' })
    .option('etcd-keyfile', { type: 'string', coerce: lastString, describe: 'client key for TLS to etcd' })
    .option('etcd-username', { type: 'string', coerce: lastString, describe: 'etcd user name' })
    .option('etcd-password', { type: 'string', coerce: lastString, describe: 'etcd password' });
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
