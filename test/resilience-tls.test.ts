// etcd with client-certificate auth (certificates made by openssl in a temp dir): flanneld works
// with --etcd-cafile/--etcd-certfile/--etcd-keyfile, and says clearly what is wrong — in its log,
// within seconds, without exiting or hanging silently — when its certificate or CA does not fit.
// Needs `npm run build`.
import { copyFileSync, existsSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { createCluster, type Cluster, type ClusterNode } from '../testbed/cluster.js';
import { spawnFlanneld, startTlsEtcd, type FlanneldProcess, type TlsEtcd } from './harness/etcd-cluster.js';
import { run, sleep, waitFor } from '../testbed/netns.js';
import { WARN, logSize, readLog, report, waitForLog } from './harness/resilience.js';
import { createTestPki, type TestPki } from './harness/tls.js';

const PREFIX = '/coreos.com/network';
const CONFIG = { Network: '198.19.0.0/16', Backend: { Type: 'vxlan' } };
// The harness's plain etcd holds 198.18.0.254:2379; the TLS one gets an address of its own.
const TLS_IP = '198.18.0.250';

let cluster: Cluster;
let pki: TestPki;
let etcd: TlsEtcd;
const daemons: FlanneldProcess[] = [];

beforeAll(async () => {
  pki = await createTestPki(['198.18.0.254', TLS_IP, '127.0.0.1']);
  cluster = await createCluster({ nodes: 5, config: CONFIG, startDaemons: false });
  await run(['ip', '-n', cluster.hubNs, 'addr', 'add', `${TLS_IP}/24`, 'dev', 'br0']);
  etcd = await startTlsEtcd(cluster.hubNs, TLS_IP, { ca: pki.ca.cert, serverCert: pki.server.cert, serverKey: pki.server.key },
    { ca: pki.ca.cert, cert: pki.client.cert, key: pki.client.key });
  await etcd.etcdctl(['put', `${PREFIX}/config`, JSON.stringify(CONFIG)]);
}, 90_000);

afterAll(async () => {
  for (const d of daemons) await d.stop('SIGKILL');
  await etcd?.stop();
  await cluster?.destroy();
  pki?.remove();
});

function start(node: ClusterNode, files: { ca?: string; cert?: string; key?: string }): FlanneldProcess {
  const d = spawnFlanneld(node, [
    `--etcd-endpoints=${etcd.endpoint}`,
    ...(files.ca ? [`--etcd-cafile=${files.ca}`] : []),
    ...(files.cert ? [`--etcd-certfile=${files.cert}`] : []),
    ...(files.key ? [`--etcd-keyfile=${files.key}`] : []),
  ]);
  daemons.push(d);
  return d;
}

const hasEnv = (node: ClusterNode) => existsSync(node.subnetFile);

test('with the right CA and client certificate, two nodes lease subnets over TLS and their pods talk', async () => {
  const [n1, n2] = cluster.nodes as [ClusterNode, ClusterNode];
  const t0 = Date.now();
  for (const n of [n1, n2]) start(n, { ca: pki.ca.cert, cert: pki.client.cert, key: pki.client.key });
  expect(await waitFor(() => hasEnv(n1) && hasEnv(n2), 20_000), `${cluster.logTail(n1)}\n${cluster.logTail(n2)}`).toBe(true);
  report('TLS etcd: daemon start to env file', { ms: Date.now() - t0 });
  const keys = await etcd.etcdctl(['get', '--prefix', `${PREFIX}/subnets/`, '--keys-only']);
  expect(keys.split('\n').filter((l) => l.trim() !== '')).toHaveLength(2);
  const [p1, p2] = [await cluster.addPod(n1), await cluster.addPod(n2)];
  expect(await waitFor(() => cluster.ping(p1, p2.ip, { timeoutS: 1 }), 10_000, 0)).toBe(true);
}, 60_000);

test('a wrong client certificate, a wrong CA, or no client certificate: a clear error in the log, no lease, no exit', async () => {
  const [, , n3, n4, n5] = cluster.nodes as ClusterNode[];
  const cases = [
    { node: n3!, what: 'client certificate signed by another CA', d: start(n3!, { ca: pki.ca.cert, cert: pki.otherClient.cert, key: pki.otherClient.key }) },
    { node: n4!, what: 'CA that did not sign the server certificate', d: start(n4!, { ca: pki.otherCa.cert, cert: pki.client.cert, key: pki.client.key }) },
    { node: n5!, what: 'no client certificate', d: start(n5!, { ca: pki.ca.cert }) },
  ];
  const t0 = Date.now();
  for (const c of cases) {
    const line = await waitForLog(c.node.logFile, (l) => l.level >= WARN && /etcd/.test(l.msg), 20_000);
    expect(line, `${c.what}: ${cluster.logTail(c.node)}`).not.toBeNull();
    report(`TLS etcd, ${c.what}`, { loggedAfterMs: line!.time - t0, msg: line!.msg, err: line!['err'], hint: line!['hint'] });
    expect(String(line!['hint'] ?? '')).toMatch(/--etcd-cafile, --etcd-certfile and --etcd-keyfile/);
  }
  await sleep(4000); // several retries (and the outage grace period) go by
  for (const c of cases) {
    expect(c.d.exited(), c.what).toBe(false);
    expect(hasEnv(c.node), c.what).toBe(false);
    // Logged once, not once per retry: the daemon's own line and the registry's outage line.
    const warnings = readLog(c.node.logFile).filter((l) => l.level >= WARN).map((l) => l.msg);
    expect(warnings.filter((m) => m.startsWith('cannot read the network config')), c.what).toHaveLength(1);
    expect(warnings.filter((m) => m.startsWith('etcd is unreachable')).length, c.what).toBeLessThanOrEqual(1);
    expect(warnings.length, c.what).toBeLessThanOrEqual(2);
  }
  const keys = await etcd.etcdctl(['get', '--prefix', `${PREFIX}/subnets/`, '--keys-only']);
  expect(keys.split('\n').filter((l) => l.trim() !== '')).toHaveLength(2);
  for (const c of cases) await c.d.stop();
}, 60_000);

test('an unreadable certificate file stops the daemon at once, naming the flag', async () => {
  const node = cluster.nodes[2]!;
  const d = start(node, { ca: pki.ca.cert, cert: '/nonexistent/client.crt', key: pki.client.key });
  expect(await waitFor(() => d.exited(), 10_000)).toBe(true);
  const fatal = readLog(node.logFile).find((l) => l.msg === 'cannot start');
  expect(fatal?.['err'], cluster.logTail(node)).toMatch(/--etcd-certfile: cannot read \/nonexistent\/client\.crt/);
}, 30_000);

test('certificates rotated on disk are read again on reconnect: a node whose certificate etcd refused takes the new one without a restart', async () => {
  const node = cluster.nodes[3]!;
  // The node's own copies, replaced in place the way rotation tools do (a new file renamed over the old).
  const cert = join(pki.dir, 'node4-client.crt');
  const key = join(pki.dir, 'node4-client.key');
  copyFileSync(pki.otherClient.cert, cert);
  copyFileSync(pki.otherClient.key, key);
  const mark = logSize(node.logFile);
  const d = start(node, { ca: pki.ca.cert, cert, key });
  expect(await waitForLog(node.logFile, (l) => l.level >= WARN && /etcd/.test(l.msg), 20_000, mark), cluster.logTail(node)).not.toBeNull();
  expect(hasEnv(node)).toBe(false);
  const rotated = Date.now();
  for (const [from, to] of [[pki.client.cert, cert], [pki.client.key, key]] as const) {
    copyFileSync(from, `${to}.new`);
    renameSync(`${to}.new`, to);
  }
  expect(await waitFor(() => hasEnv(node), 20_000), cluster.logTail(node)).toBe(true);
  report('TLS etcd, client certificate rotated on disk', { envFileAfterMs: Date.now() - rotated });
  expect(d.exited()).toBe(false);
  expect(readLog(node.logFile, mark).some((l) => l.msg === 'etcd TLS files changed on disk; new connections use them')).toBe(true);
  await d.stop();
}, 60_000);
