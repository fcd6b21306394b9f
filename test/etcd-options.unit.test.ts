// The etcd connection flags that are wrong but not fatal (TLS files on plaintext endpoints, a password
// sent in plaintext), and TLS files read again when they change on disk (certificates rotated in place;
// a reconnect, which makes a fresh client, presents the new ones). No etcd here: the options only.
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../src/common/log.js';
import { ClientOptionsSource, etcdConnectionWarnings } from '../src/etcd/connection.js';

describe('etcd connection warnings', () => {
  const base = { prefix: '/coreos.com/network' };

  it('says when a client certificate and key cannot be used, and when a password would go in plaintext', () => {
    const plain = { ...base, endpoints: ['http://198.18.0.254:2379'] };
    expect(etcdConnectionWarnings({ ...plain, certFile: '/c.pem', keyFile: '/k.pem' })).toEqual([expect.stringMatching(/--etcd-certfile and --etcd-keyfile are not used/)]);
    expect(etcdConnectionWarnings({ ...plain, username: 'flannel', password: 'secret' })).toEqual([expect.stringMatching(/--etcd-password is sent to etcd in plaintext/)]);
    // TLS: nothing to say.
    const tls = { ...base, endpoints: ['https://198.18.0.254:2379'], caFile: '/ca.pem' };
    expect(etcdConnectionWarnings({ ...tls, certFile: '/c.pem', keyFile: '/k.pem', username: 'flannel', password: 'secret' })).toEqual([]);
    expect(etcdConnectionWarnings(plain)).toEqual([]);
  });
});

describe('TLS files read again when they change', () => {
  const dir = mkdtempSync(join(tmpdir(), 'flannel-tls-files-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('a fresh client gets the rotated files; a file missing mid-rotation keeps the last good ones', () => {
    const [ca, cert, key] = ['ca.pem', 'cert.pem', 'key.pem'].map((f) => join(dir, f)) as [string, string, string];
    writeFileSync(ca, 'CA 1');
    writeFileSync(cert, 'CERT 1');
    writeFileSync(key, 'KEY 1');
    const source = new ClientOptionsSource({ endpoints: ['https://198.18.0.254:2379'], prefix: '/p', caFile: ca, certFile: cert, keyFile: key }, silentLogger);
    const chain = () => source.current().credentials?.certChain?.toString();
    expect(chain()).toBe('CERT 1');
    // Rotated the usual way: new files renamed over the old ones.
    writeFileSync(`${cert}.new`, 'CERT 2');
    renameSync(`${cert}.new`, cert);
    expect(chain()).toBe('CERT 2');
    expect(source.current().credentials?.privateKey?.toString()).toBe('KEY 1');
    rmSync(key);
    expect(chain()).toBe('CERT 2');
    writeFileSync(key, 'KEY 2');
    expect(source.current().credentials?.privateKey?.toString()).toBe('KEY 2');
  });
});
