// Throw-away X.509 material for TLS tests, made with the openssl CLI in a temp dir: a CA, a server
// certificate for etcd (SAN IPs given by the caller), a client certificate signed by that CA, and a
// second, unrelated CA with its own client certificate (what a misconfigured node would present).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../../testbed/netns.js';

export interface CertPair {
  cert: string;
  key: string;
}

export interface TestPki {
  dir: string;
  ca: CertPair;
  server: CertPair;
  client: CertPair;
  /** A CA etcd does not trust, and a client certificate it signed. */
  otherCa: CertPair;
  otherClient: CertPair;
  remove(): void;
}

async function openssl(args: string[]): Promise<void> {
  await run(['openssl', ...args], { timeoutMs: 20_000 });
}

async function makeCa(dir: string, name: string): Promise<CertPair> {
  const pair = { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
  await openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
    '-subj', `/CN=${name}`, '-keyout', pair.key, '-out', pair.cert]);
  return pair;
}

/** A leaf certificate signed by `ca`, for server and/or client use. */
async function makeLeaf(dir: string, name: string, ca: CertPair, sanIps: string[]): Promise<CertPair> {
  const pair = { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
  const csr = join(dir, `${name}.csr`);
  const ext = join(dir, `${name}.ext`);
  writeFileSync(ext, [
    'basicConstraints=CA:FALSE',
    'keyUsage=digitalSignature,keyEncipherment',
    'extendedKeyUsage=serverAuth,clientAuth',
    ...(sanIps.length > 0 ? [`subjectAltName=${sanIps.map((ip) => `IP:${ip}`).join(',')}`] : []),
    '',
  ].join('\n'));
  await openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/CN=${name}`,
    '-keyout', pair.key, '-out', csr]);
  await openssl(['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-days', '2',
    '-extfile', ext, '-out', pair.cert]);
  return pair;
}

/** Creates the CA, server and client certificates; `serverIps` go into the server's SAN. */
export async function createTestPki(serverIps: string[]): Promise<TestPki> {
  const dir = mkdtempSync(join(tmpdir(), 'flannel-pki-'));
  try {
    const ca = await makeCa(dir, 'ca');
    const otherCa = await makeCa(dir, 'other-ca');
    const [server, client, otherClient] = await Promise.all([
      makeLeaf(dir, 'etcd-server', ca, serverIps),
      makeLeaf(dir, 'flanneld-client', ca, []),
      makeLeaf(dir, 'stranger-client', otherCa, []),
    ]);
    return { dir, ca, server, client, otherCa, otherClient, remove: () => rmSync(dir, { recursive: true, force: true }) };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}
