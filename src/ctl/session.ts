// How flannelctl talks to etcd: one registry per command, closed afterwards, and failures that name
// every endpoint tried (the client fails over between them, so the last error alone says too little).
import { silentLogger } from '../common/log.js';
import { etcdOptionsFrom } from '../etcd/flags.js';
import { EtcdRegistry, etcdErrorFields, isConnectivityError } from '../etcd/registry.js';

export type EtcdArgs = Parameters<typeof etcdOptionsFrom>[0];

/** A failure flannelctl reports as one line (and exit 1), without a stack. */
export class CtlError extends Error {
  override name = 'CtlError';
}

export async function withRegistry<T>(argv: EtcdArgs, fn: (r: EtcdRegistry) => Promise<T>): Promise<T> {
  const options = etcdOptionsFrom(argv);
  let registry: EtcdRegistry;
  try {
    registry = new EtcdRegistry(options, silentLogger);
  } catch (err) {
    throw new CtlError((err as Error).message);
  }
  try {
    return await fn(registry);
  } catch (err) {
    if (err instanceof CtlError) throw err;
    const { err: raw, hint } = etcdErrorFields(err);
    const message = raw.replace(/\s*Resolution note:\s*$/, '');
    const what = isConnectivityError(err) ? 'cannot reach etcd' : 'etcd refused the request';
    throw new CtlError(`${what} (endpoints tried: ${options.endpoints.join(', ')}): ${message}${hint ? `\n  hint: ${hint}` : ''}`);
  } finally {
    registry.close();
  }
}
