// The CNI plugin's view of flanneld's subnet env file: the shared parser (src/subnet/envfile.ts), with
// its failures turned into CNI error codes.
import { type SubnetEnv, SubnetEnvError, readSubnetEnvFile } from '../subnet/envfile.js';
import { CNI_ERR, CniError } from './errors.js';

export function readFlannelSubnetEnv(path: string): SubnetEnv {
  try {
    return readSubnetEnvFile(path);
  } catch (err) {
    if (!(err instanceof SubnetEnvError)) throw err;
    // flanneld writes the file once it holds a lease: until then the runtime should simply retry.
    if (err.kind === 'missing') throw new CniError(
        CNI_ERR.tryAgainLater,
        `subnet file ${path} does not exist: is flanneld running on this node (it writes the file once it holds a subnet lease)?`,
      );
    if (err.missingVars.length > 0) throw new CniError(CNI_ERR.invalidNetworkConfig, `${path} is missing ${err.missingVars.join(', ')}`);
    throw new CniError(err.kind === 'unreadable' ? CNI_ERR.ioFailure : CNI_ERR.invalidNetworkConfig, err.message);
  }
}
